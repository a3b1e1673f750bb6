#include "model/arena.h"

#include <cassert>

#include "kernels/backend.h"

namespace tune {

size_t Table::add(const std::string& name, const std::vector<size_t>& shape) {
    TensorInfo t;
    t.name = name;
    t.shape = shape;
    t.numel = 1;
    for (size_t d : shape) t.numel *= d;
    t.offset = (total_ + kAlign - 1) / kAlign * kAlign;
    total_ = t.offset + t.numel;
    tensors_.push_back(t);
    return tensors_.size() - 1;
}

int Table::find(const std::string& name) const {
    for (size_t i = 0; i < tensors_.size(); i++)
        if (tensors_[i].name == name) return (int)i;
    return -1;
}

Arena::~Arena() { release(); }

void Arena::allocate(Backend& be, Table table, DType dtype) {
    release();
    be_ = &be;
    table_ = std::move(table);
    dtype_ = dtype;
    held_ = true;
    if (bytes() > 0) {
        base_ = be.alloc(bytes());
        be.zero(base_, bytes());
    }
}

void Arena::describe(Table table, DType dtype) {
    release();
    table_ = std::move(table);
    dtype_ = dtype;
    held_ = false;
}

void Arena::release() {
    if (base_) be_->free(base_);
    base_ = nullptr;
    table_ = Table();
}

void* Arena::ptr(size_t i) const {
    assert(i < table_.size() && held_);
    return static_cast<char*>(base_) + table_[i].offset * dtype_size(dtype_);
}

}  // namespace tune
