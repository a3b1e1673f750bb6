#include "train/fisher.h"

#include <cmath>

#include "data/safetensors.h"
#include "kernels/common.h"

namespace tune {

static std::string shape_text(const std::vector<size_t>& shape) {
    std::string s = "(";
    for (size_t k = 0; k < shape.size(); k++) s += (k ? ", " : "") + std::to_string(shape[k]);
    return s + ")";
}

void write_fisher(const std::string& path, const Table& g, const std::vector<std::vector<float>>& values, int batches) {
    SafetensorsWriter w;
    for (size_t i = 0; i < g.size(); i++) {
        const std::vector<uint64_t> shape(g[i].shape.begin(), g[i].shape.end());
        w.add(g[i].name, SafetensorsDtype::F32, shape, values[i].data(), values[i].size() * sizeof(float));
    }
    w.set_metadata("format", "tune.cu ewc fisher");
    w.set_metadata("batches", std::to_string(batches));
    w.write(path);
}

void read_fisher(const std::string& path, const Table& g,
                 const std::function<void(size_t i, const std::vector<float>& values)>& take) {
    SafetensorsFile f(path);
    for (size_t i = 0; i < g.size(); i++) {
        const SafetensorsTensorInfo* t = f.find(g[i].name);
        if (!t)
            throw Error(path + ": no Fisher values for trainable tensor '" + g[i].name +
                        "' (estimated for other parameters? delete the file to estimate it again)");
        // Equal counts are not enough: a (768, 2304) Fisher read into a (2304, 768) tensor holds every value
        // at another parameter's place.
        const std::vector<size_t> shape(t->shape.begin(), t->shape.end());
        if (shape != g[i].shape)
            throw Error(path + ": tensor '" + g[i].name + "' has shape " + shape_text(shape) +
                        ", the model's has " + shape_text(g[i].shape));
        const std::vector<float> v = f.read_f32(g[i].name);
        for (size_t k = 0; k < v.size(); k++)
            if (!std::isfinite(v[k]) || v[k] < 0)
                throw Error(path + ": tensor '" + g[i].name + "' holds " + std::to_string(v[k]) + " at element " +
                            std::to_string(k) + "; Fisher values are finite and not negative (squared gradients)");
        take(i, v);
    }
}

}  // namespace tune
