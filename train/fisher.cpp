#include "train/fisher.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "data/fileio.h"
#include "data/safetensors.h"
#include "data/shard.h"
#include "kernels/common.h"
#include "train/checkpoint.h"

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
    // Its folder may be one --out makes, or one of its own (bin/train checked that no file stands in the way).
    const std::string dir = std::filesystem::path(path).parent_path().string();
    if (!dir.empty()) make_dirs(dir);
    w.write(path);
}

// The project's other files, given as --fisher by mistake, named for what they are rather than as a safetensors
// header of an absurd length.
static void refuse_other_kinds(const std::string& path) {
    char head[8] = {};
    std::ifstream in(path, std::ios::binary);
    in.read(head, sizeof head);
    if (in.gcount() != (std::streamsize)sizeof head) return;  // the safetensors reader says what is wrong
    if (std::memcmp(head, kShardMagic, sizeof head) == 0)
        throw Error(path + ": is a token shard, not a Fisher file (safetensors): give the shards to estimate it on "
                    "as --fisher-data, and as --fisher the file to write the estimate to");
    if (std::memcmp(head, kCkptMagic, sizeof head) == 0)
        throw Error(path + ": is a tune.cu checkpoint, not a Fisher file (safetensors, which an --ewc run with "
                    "--fisher-data writes to --fisher)");
}

void read_fisher(const std::string& path, const Table& g,
                 const std::function<void(size_t i, const std::vector<float>& values)>& take) {
    refuse_other_kinds(path);
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

uint64_t fisher_fingerprint(uint64_t h, const std::string& name, const std::vector<float>& values) {
    if (h == 0) h = hash_bytes(nullptr, 0);
    h = hash_words(name.data(), name.size(), h);
    h = hash_words(values.data(), values.size() * sizeof(float), h);
    return h ? h : 1;
}

}  // namespace tune
