// Stacks captured while C++ exceptions fly: allocations in constructors, destructors run
// during unwinding, and the exception objects themselves (__cxa_allocate_exception mallocs).
#include <cstdio>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

struct Noisy {
    std::vector<std::string> v;
    explicit Noisy(int i) : v(8, std::string(40 + i % 64, 'x')) {}
    ~Noisy() { std::vector<int> tmp(16 + v.size()); (void)tmp; }
};

__attribute__((noinline)) static void deep(int depth, int i) {
    Noisy n(i);
    if (depth == 0) throw std::runtime_error(std::string(100 + i % 50, 'e'));
    deep(depth - 1, i);
}

int main() {
    std::map<int, std::string> kept;
    long caught = 0;
    for (int i = 0; i < 20000; i++) {
        try {
            deep(i % 12, i);
        } catch (const std::exception &e) {
            caught += (long)e.what()[0] == 'e';
            kept[i % 997] = e.what();
        }
    }
    std::printf("caught %ld kept %zu\n", caught, kept.size());
    return caught == 20000 ? 0 : 1;
}
