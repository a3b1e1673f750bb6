// Parameter-efficient fine-tuning: what the model adds to the frozen GPT-2 (model/gpt2.h).
//
// LoRA (Hu et al. 2021) on any of the four linear layers of a block (sites): the layer's output becomes
//     y = x W^T + b + (alpha / r) * dropout(x) A^T B^T        A (r, IC), B (OC, r)
// with A Kaiming-uniform (bound 1/sqrt(IC), as the reference code's kaiming_uniform_(a=sqrt(5))) and B = 0,
// so training starts exactly at the base model. Tensors h.<l>.<site>.lora_A / lora_B.
//
// Virtual tokens: P positions placed before every sequence. The real tokens then sit at positions P..P+T-1
// (as in Hugging Face PEFT, where they follow the prompt), the loss never counts a virtual position, and
// generation prepends them once during prefill.
//   prompt     soft prompt tuning (Lester et al. 2021): prompt.embedding (P, C) is the whole input vector
//              of each virtual position (position embedding included).
//   ptune      P-tuning (Liu et al. 2021): the same input vectors, produced as
//              e = u + proj(gelu(fc(u))) from trainable u = ptune.input (P, C) and a two-layer network
//              of width H; folded into a plain `prompt` after training.
//   prefix     prefix tuning (Li & Liang 2021): every layer's keys and values at the virtual positions are
//              trainable, reparameterised as kv = proj(gelu(fc(u))) (P, L*2C) from u = prefix.input (P, C);
//              folded into `prefix_kv` after training.
//   prefix_kv  the folded form: prefix.kv (P, L*2C), layer l's keys at columns [2lC, 2lC+C), values next.
#pragma once

#include <string>

#include "model/config.h"

namespace tune {

enum LoraSite { kLoraQkv = 0, kLoraAttnProj, kLoraMlpUp, kLoraMlpDown, kLoraSites };
constexpr unsigned kLoraAll = (1u << kLoraSites) - 1;

enum class Virtual { none, prompt, ptune, prefix, prefix_kv };

struct PeftConfig {
    int lora_rank = 0;          // r; 0 = no LoRA
    float lora_alpha = 16.0f;   // the update is scaled by alpha / r
    float lora_dropout = 0.0f;  // on the LoRA branch's input, training only
    unsigned lora_targets = 0;  // bit set of LoraSite
    Virtual virt = Virtual::none;
    int n_virtual = 0;  // P
    int hidden = 0;     // H of the ptune / prefix network

    bool lora() const { return lora_rank > 0 && lora_targets != 0; }
    bool lora_at(int site) const { return lora() && (lora_targets >> site & 1u); }
    float lora_scale() const { return lora_alpha / (float)lora_rank; }
    int virtual_tokens() const { return virt == Virtual::none ? 0 : n_virtual; }
    // Parameter tensors of the virtual-token kind: the network's five (input, fc, proj), or the one table.
    int virtual_tensors() const {
        return virt == Virtual::none ? 0 : virt == Virtual::ptune || virt == Virtual::prefix ? 5 : 1;
    }
    // Width of each virtual position's source row: an input vector (C) or every layer's key and value (2LC).
    int virtual_width(const ModelConfig& c) const {
        return virt == Virtual::prompt || virt == Virtual::ptune ? c.n_embd : 2 * c.n_embd * c.n_layer;
    }
    bool any() const { return lora() || virt != Virtual::none; }
    bool operator==(const PeftConfig& o) const;
    std::string describe() const;  // "LoRA r=8 alpha=16 on qkv,mlp_up; prompt P=20"
};

// "qkv,attn_proj,mlp_up,mlp_down" (any subset) or "all" -> bit set; throws UsageError naming `flag`.
unsigned parse_lora_targets(const std::string& list, const std::string& flag);
std::string lora_targets_string(unsigned targets);
const char* lora_site_name(int site);    // "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"
const char* lora_site_option(int site);  // "qkv", "attn_proj", "mlp_up", "mlp_down"

const char* virtual_name(Virtual v);  // "none", "prompt", "ptune", "prefix", "prefix_kv"
Virtual parse_virtual(const std::string& name, const std::string& where);  // throws Error naming `where`

// Ranges and consistency (rank > 0 with targets, P >= 1 for virtual kinds, H >= 1 for ptune/prefix, P
// leaving room in the block size); throws Error naming `where` and the field.
void validate_peft(const PeftConfig& p, const ModelConfig& cfg, const std::string& where);

}  // namespace tune
