// Arenas: one allocation per category (parameters, gradients, optimizer state, activations), carved
// into named tensors by a table. Zeroing, norms and updates are single passes over an arena; the
// table is what checkpoints, the memory map and name-based selection read.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "kernels/common.h"

namespace tune {

struct TensorInfo {
    std::string name;
    std::vector<size_t> shape;
    size_t numel = 0;
    size_t offset = 0;  // in elements from the arena's start; a multiple of Table::kAlign
};

class Table {
   public:
    // Tensors start on 64-element boundaries (128 bytes in bf16) so vectorised GPU loads stay aligned.
    static constexpr size_t kAlign = 64;

    size_t add(const std::string& name, const std::vector<size_t>& shape);  // returns the index
    const TensorInfo& operator[](size_t i) const { return tensors_[i]; }
    size_t size() const { return tensors_.size(); }
    size_t total() const { return total_; }  // elements, gaps included
    int find(const std::string& name) const;  // -1 when absent
    const std::vector<TensorInfo>& tensors() const { return tensors_; }

   private:
    std::vector<TensorInfo> tensors_;
    size_t total_ = 0;
};

class Backend;

// A table plus the memory it describes. The backend allocates it and zeroes it.
class Arena {
   public:
    Arena() = default;
    Arena(const Arena&) = delete;
    Arena& operator=(const Arena&) = delete;
    ~Arena();

    void allocate(Backend& be, Table table, DType dtype);
    // The table alone, without memory (ZeRO-2's gradients live elsewhere: GPT2::grad_ptr): bytes() is 0, ptr() and
    // base() are not to be used, elems() and table() describe the layout.
    void describe(Table table, DType dtype);
    void release();  // the memory and the table: empty again
    void* ptr(size_t i) const;  // start of tensor i
    void* base() const { return base_; }
    size_t bytes() const { return held_ ? table_.total() * dtype_size(dtype_) : 0; }
    bool holds_memory() const { return held_; }
    size_t elems() const { return table_.total(); }
    const Table& table() const { return table_; }
    DType dtype() const { return dtype_; }

   private:
    Backend* be_ = nullptr;
    Table table_;
    DType dtype_ = DType::f32;
    void* base_ = nullptr;
    bool held_ = true;  // false after describe()
};

}  // namespace tune
