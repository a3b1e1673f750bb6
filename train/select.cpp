#include "train/select.h"

#include <fnmatch.h>

#include <cmath>

#include "kernels/common.h"
#include "train/cli.h"

namespace tune {

int param_layer(const std::string& name, int n_layer) {
    if (name.rfind("h.", 0) == 0) return std::stoi(name.substr(2));
    if (name.rfind("ln_f.", 0) == 0) return n_layer;
    // Virtual tokens sit before the embeddings in the sequence but train like the top of the model.
    if (name.rfind("prompt.", 0) == 0 || name.rfind("ptune.", 0) == 0 || name.rfind("prefix.", 0) == 0) return n_layer;
    return -1;  // wte, wpe
}

Trainable select_trainable(const ModelConfig& cfg, int top_k, const std::string& patterns) {
    const Table t = gpt2_param_table(cfg);
    Trainable tr;
    tr.tensor.assign(t.size(), true);
    if (top_k > 0 && !patterns.empty()) throw UsageError("--train-top and --train-only: give one, not both");
    if (top_k > cfg.n_layer)
        throw UsageError("--train-top: " + std::to_string(top_k) + " is more than the model's " +
                         std::to_string(cfg.n_layer) + " blocks");
    if (top_k > 0)
        for (size_t i = 0; i < t.size(); i++) tr.tensor[i] = param_layer(t[i].name, cfg.n_layer) >= cfg.n_layer - top_k;
    if (!patterns.empty()) {
        const std::vector<std::string> pats = split_list(patterns);
        for (size_t i = 0; i < t.size(); i++) {
            tr.tensor[i] = false;
            for (const auto& p : pats) tr.tensor[i] = tr.tensor[i] || fnmatch(p.c_str(), t[i].name.c_str(), 0) == 0;
        }
        for (const auto& p : pats) {
            bool any = false;
            for (size_t i = 0; i < t.size(); i++) any = any || fnmatch(p.c_str(), t[i].name.c_str(), 0) == 0;
            if (!any) throw UsageError("--train-only: pattern '" + p + "' matches no parameter (names look like " +
                                       "wte, h.0.attn.c_attn.weight, ln_f.bias)");
        }
    }
    return tr;
}

void apply_discriminative_lr(const GPT2& model, AdamW& opt, float factor) {
    const Table& g = model.grads().table();
    const int L = model.config().n_layer;
    for (size_t i = 0; i < g.size(); i++)
        opt.set_lr_scale(i, (float)std::pow((double)factor, (double)(L - 1 - std::min(param_layer(g[i].name, L), L - 1))));
}

}  // namespace tune
