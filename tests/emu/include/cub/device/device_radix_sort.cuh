// The CUDA emulator's stand-in for CUB's device radix sort (tests/emu/cuda_emu.h): same call, same
// result (a stable sort of the pairs by bits [begin_bit, end_bit) of the key), computed on the host, queued on
// the call's stream like any kernel (tests/emu/cuda_emu.h).
// The first call, without storage, asks for a small temporary buffer as CUB does, and the second checks
// it was given one that large.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <numeric>
#include <vector>

namespace cub {

struct DeviceRadixSort {
    static constexpr size_t kTempBytes = 256;

    template <class K, class V, class N>
    static cudaError_t SortPairs(void* d_temp_storage, size_t& temp_storage_bytes, const K* keys_in, K* keys_out,
                                 const V* values_in, V* values_out, N num_items, int begin_bit = 0,
                                 int end_bit = (int)(sizeof(K) * 8), cudaStream_t stream = nullptr, bool = false) {
        if (!d_temp_storage) {
            temp_storage_bytes = kTempBytes;
            return cudaSuccess;
        }
        if (temp_storage_bytes < kTempBytes || begin_bit < 0 || end_bit > (int)(sizeof(K) * 8) || begin_bit > end_bit)
            return cudaErrorInvalidValue;
        const size_t n = (size_t)num_items;
        emu::enqueue(stream, [=] {
            auto bits = [&](K k) {
                using U = unsigned long long;
                const U width = (U)(end_bit - begin_bit);
                const U mask = width >= 64 ? ~U(0) : (U(1) << width) - 1;
                return ((U)k >> begin_bit) & mask;
            };
            std::vector<size_t> order(n);
            std::iota(order.begin(), order.end(), size_t(0));
            std::stable_sort(order.begin(), order.end(),
                             [&](size_t a, size_t b) { return bits(keys_in[a]) < bits(keys_in[b]); });
            std::vector<K> k(n);
            std::vector<V> v(n);
            for (size_t i = 0; i < n; ++i) {
                k[i] = keys_in[order[i]];
                v[i] = values_in[order[i]];
            }
            std::copy(k.begin(), k.end(), keys_out);
            std::copy(v.begin(), v.end(), values_out);
        });
        return cudaSuccess;
    }
};

}  // namespace cub
