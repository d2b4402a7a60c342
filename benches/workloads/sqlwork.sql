-- SQLite workload for the allocator benchmark; the harness replaces @ROWS@
-- (a multiple of 1000) and checks that the last line printed is "OK".
PRAGMA cache_size = -32768;
CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT, v BLOB, n INTEGER);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < @ROWS@)
INSERT INTO t SELECT x, printf('key-%08d-%s', (x * 7919) % @ROWS@, hex(x * 31)), zeroblob(x % 200), x % 1000 FROM c;
CREATE INDEX t_k ON t(k);
CREATE INDEX t_n ON t(n);
CREATE TABLE agg AS SELECT n, count(*) AS c, sum(length(v)) AS s, group_concat(substr(k, 5, 8), ',') AS g FROM t GROUP BY n;
UPDATE t SET k = k || '-updated-' || n WHERE n % 3 = 0;
DELETE FROM t WHERE n % 5 = 0;
CREATE TEMP TABLE j AS SELECT a.id AS id, length(a.k) + length(b.k) AS l FROM t a JOIN t b ON b.id = a.id + 1 WHERE a.n < 500;
SELECT CASE
  WHEN (SELECT count(*) FROM t) = @ROWS@ - @ROWS@ / 5
   AND (SELECT count(*) FROM agg) = 1000
   AND (SELECT sum(c) FROM agg) = @ROWS@
   AND (SELECT count(*) FROM t WHERE k LIKE '%-updated-%') = (SELECT count(*) FROM t WHERE n % 3 = 0)
   AND (SELECT count(*) FROM j) > 0
  THEN 'OK' ELSE 'BAD' END;
