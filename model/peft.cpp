#include "model/peft.h"

#include <cmath>
#include <sstream>

#include "kernels/common.h"

namespace tune {

static const char* const kSiteNames[kLoraSites] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};
static const char* const kSiteOptions[kLoraSites] = {"qkv", "attn_proj", "mlp_up", "mlp_down"};

const char* lora_site_name(int site) { return kSiteNames[site]; }
const char* lora_site_option(int site) { return kSiteOptions[site]; }

bool PeftConfig::operator==(const PeftConfig& o) const {
    const bool same_lora = lora() == o.lora() && (!lora() || (lora_rank == o.lora_rank && lora_alpha == o.lora_alpha &&
                                                              lora_targets == o.lora_targets));
    const bool same_virt = virt == o.virt && virtual_tokens() == o.virtual_tokens() &&
                           ((virt != Virtual::ptune && virt != Virtual::prefix) || hidden == o.hidden);
    return same_lora && same_virt;  // dropout is a training setting, not part of the model
}

unsigned parse_lora_targets(const std::string& list, const std::string& flag) {
    if (list == "all") return kLoraAll;
    unsigned bits = 0;
    std::stringstream ss(list);
    for (std::string item; std::getline(ss, item, ',');) {
        if (item.empty()) continue;
        int found = -1;
        for (int s = 0; s < kLoraSites; s++)
            if (item == kSiteOptions[s]) found = s;
        if (found < 0)
            throw UsageError(flag + ": unknown LoRA target '" + item + "' (expected all, or some of qkv, attn_proj, "
                                    "mlp_up, mlp_down)");
        bits |= 1u << found;
    }
    if (!bits) throw UsageError(flag + ": no LoRA target given");
    return bits;
}

std::string lora_targets_string(unsigned targets) {
    std::string out;
    for (int s = 0; s < kLoraSites; s++)
        if (targets >> s & 1u) out += (out.empty() ? "" : ",") + std::string(kSiteOptions[s]);
    return out;
}

const char* virtual_name(Virtual v) {
    switch (v) {
        case Virtual::none: return "none";
        case Virtual::prompt: return "prompt";
        case Virtual::ptune: return "ptune";
        case Virtual::prefix: return "prefix";
        case Virtual::prefix_kv: return "prefix_kv";
    }
    return "?";
}

Virtual parse_virtual(const std::string& name, const std::string& where) {
    for (Virtual v : {Virtual::none, Virtual::prompt, Virtual::ptune, Virtual::prefix, Virtual::prefix_kv})
        if (name == virtual_name(v)) return v;
    throw Error(where + ": unknown virtual-token kind '" + name +
                "' (expected none, prompt, ptune, prefix or prefix_kv)");
}

std::string PeftConfig::describe() const {
    std::ostringstream os;
    if (lora())
        os << "LoRA r=" << lora_rank << " alpha=" << lora_alpha << " on " << lora_targets_string(lora_targets);
    if (virt != Virtual::none) {
        if (lora()) os << "; ";
        os << virtual_name(virt) << " P=" << n_virtual;
        if (virt == Virtual::ptune || virt == Virtual::prefix) os << " H=" << hidden;
    }
    return lora() || virt != Virtual::none ? os.str() : "none";
}

void validate_peft(const PeftConfig& p, const ModelConfig& cfg, const std::string& where) {
    auto fail = [&](const std::string& what) { throw Error(where + ": " + what); };
    if (p.lora_rank < 0 || p.lora_rank > 4 * cfg.n_embd)
        fail("lora rank " + std::to_string(p.lora_rank) + " is outside [0, 4 * n_embd = " +
             std::to_string(4 * cfg.n_embd) + "]");
    if (p.lora_rank > 0 && !p.lora_targets) fail("lora rank given but no LoRA targets");
    if (p.lora_targets & ~kLoraAll) fail("lora targets hold unknown bits");
    if (p.lora() && !(p.lora_alpha > 0 && std::isfinite(p.lora_alpha))) fail("lora alpha must be positive and finite");
    if (p.lora_dropout < 0 || p.lora_dropout >= 1) fail("lora dropout must be in [0, 1)");
    if (p.virt != Virtual::none) {
        if (p.n_virtual < 1) fail("virtual tokens: the count must be at least 1");
        if (p.n_virtual >= cfg.block_size)
            fail("virtual tokens: " + std::to_string(p.n_virtual) + " leave no room in the block size " +
                 std::to_string(cfg.block_size));
        if ((p.virt == Virtual::ptune || p.virt == Virtual::prefix) && (p.hidden < 1 || p.hidden > (1 << 20)))
            fail(std::string(virtual_name(p.virt)) + ": the network's hidden width " + std::to_string(p.hidden) +
                 " is outside [1, 1048576]");
    }
}

}  // namespace tune
