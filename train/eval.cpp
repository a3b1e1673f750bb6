#include "train/eval.h"

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cmath>
#include <nlohmann/json.hpp>
#include <sstream>
#include <utility>

#include "data/fileio.h"
#include "data/json_depth.h"
#include "kernels/common.h"
#include "model/sampling.h"
#include "train/metrics.h"

namespace tune {

LossResult eval_loss(GPT2& model, Loader& loader, int batches, const char* progress) {
    LossResult r;
    const size_t B = (size_t)loader.B();
    r.pass_batches = (loader.windows_per_epoch() + B - 1) / B;
    const size_t want = batches <= 0 ? r.pass_batches : std::min(r.pass_batches, (size_t)batches);
    loader.set_state(LoaderState{});
    double sum = 0;
    Batch b;
    ProgressLine line(progress, want);
    while (r.batches < want && loader.next_in_epoch(b)) {
        model.forward(b.inputs.data(), b.B, b.T, b.weights.data(), b.positions_or_null());
        sum += model.loss(b.targets.data(), b.weights.data(), 0.0f, false);
        for (float w : b.weights) r.tokens += w != 0.0f;
        line.update(++r.batches);
    }
    r.loss = r.tokens ? sum / (double)r.tokens : NAN;
    r.perplexity = std::exp(r.loss);
    return r;
}

// A value shown in a message, cut short: a line may be as long as a whole file.
static std::string clipped(const std::string& s, size_t max = 200) {
    return s.size() <= max ? s : s.substr(0, max) + "... (" + std::to_string(s.size()) + " bytes)";
}

std::vector<ChoiceExample> read_choice_file(const Tokenizer& tok, const std::string& path) {
    std::vector<uint8_t> bytes = read_file_bytes(path);
    std::istringstream in(std::string(bytes.begin(), bytes.end()));
    std::vector<ChoiceExample> out;
    std::string line;
    bool first = true;  // the first line that is not blank
    for (size_t n = 1; std::getline(in, line); n++) {
        const size_t start = line.find_first_not_of(" \t\r");
        if (start == std::string::npos) continue;
        const std::string where = path + ":" + std::to_string(n);
        check_json_depth(line, where);
        if (std::exchange(first, false) && line[start] == '[')
            throw Error(path + ": opens a JSON array, and --choices reads JSONL, one object a line (an array of them "
                        "becomes that with: jq -c '.[]' " + path + ")");
        nlohmann::json j;
        try {
            j = nlohmann::json::parse(line);
        } catch (const nlohmann::json::exception& e) {  // parse_error, and out_of_range for a number beyond a double
            throw Error(where + ": not valid JSON: " + clipped(json_reason(e)));
        }
        if (!j.is_object()) throw Error(where + ": " + clipped(j.dump()) + " is not a JSON object");
        // HellaSwag's own files call the context "ctx": read them as they come.
        const char* ctx_key = j.contains("context") || !j.contains("ctx") ? "context" : "ctx";
        if (!j.contains(ctx_key)) throw Error(where + ": missing string \"context\" (or HellaSwag's \"ctx\")");
        if (!j[ctx_key].is_string())
            throw Error(where + ": \"" + ctx_key + "\" is " + clipped(j[ctx_key].dump()) + ", expected a string");
        if (!j.contains("endings") || !j["endings"].is_array() || j["endings"].size() < 2)
            throw Error(where + ": \"endings\" must be an array of at least two strings");
        // An integer, or a string holding one (HellaSwag's files on the Hugging Face hub have "label": "3").
        if (!j.contains("label")) throw Error(where + ": missing \"label\" (the index of the right ending)");
        const nlohmann::json& lj = j["label"];
        int label = -1;
        bool label_ok = lj.is_number_integer();
        if (label_ok) {  // one past int's range is no ending's index either (and must not wrap into one)
            const int64_t l = lj.is_number_unsigned() && lj.get<uint64_t>() > (uint64_t)INT_MAX ? -1 : lj.get<int64_t>();
            label = l >= INT_MIN && l <= INT_MAX ? (int)l : -1;
        } else if (lj.is_string()) {
            const std::string v = lj.get<std::string>();
            char* end = nullptr;
            const long l = std::strtol(v.c_str(), &end, 10);
            const size_t digits = v.find_first_not_of('-') == 1 ? 1 : 0;  // one optional minus, then digits only
            label_ok = v.size() > digits && v.find_first_not_of("0123456789", digits) == std::string::npos &&
                       *end == 0 && l >= INT_MIN && l <= INT_MAX;
            label = (int)l;
        }
        if (!label_ok)
            throw Error(where + ": \"label\" is " + clipped(lj.dump()) +
                        ", not an integer (the index of the right ending)");
        ChoiceExample ex;
        ex.where = where;
        std::string ctx = j[ctx_key].get<std::string>();
        // TEACH: GPT-2's tokenizer puts a space in front of the word after it (" mat" is one token). A context that
        // ends in whitespace ("... on the ") would be scored as a lone " " token and then "mat": a split the model
        // never saw in training. The whitespace moves to the front of each ending instead.
        const size_t last = ctx.find_last_not_of(" \t\n\r\f\v");
        const std::string trailing = last == std::string::npos ? "" : ctx.substr(last + 1);
        ctx.resize(ctx.size() - trailing.size());
        ex.context = tok.encode(ctx);
        for (const auto& e : j["endings"]) {
            if (!e.is_string() || e.get<std::string>().empty())
                throw Error(where + ": ending " + std::to_string(ex.endings.size()) + " is " + clipped(e.dump()) +
                            ", expected a non-empty string");
            std::string end = trailing + e.get<std::string>();
            // The ending continues the context: join with a space unless one side already has it.
            if (!ctx.empty() && !std::isspace((unsigned char)ctx.back()) && !std::isspace((unsigned char)end[0]))
                end = " " + end;
            ex.endings.push_back(tok.encode(end));
        }
        ex.label = label;
        if (ex.label < 0 || ex.label >= (int)ex.endings.size())
            throw Error(where + ": \"label\" " + lj.dump() + " is not the index of an ending (0 to " +
                        std::to_string(ex.endings.size() - 1) + ")");
        if (ex.context.empty()) throw Error(where + ": \"context\" is empty");
        out.push_back(std::move(ex));
    }
    if (out.empty()) throw Error(path + ": no examples");
    return out;
}

void check_choice_examples(const std::vector<ChoiceExample>& examples, int vocab_size, int positions) {
    for (const ChoiceExample& ex : examples) {
        size_t longest = 0;
        for (const auto& e : ex.endings) longest = std::max(longest, e.size());
        if (longest >= (size_t)positions)
            throw Error(ex.where + ": an ending of " + std::to_string(longest) + " tokens leaves no room for the "
                        "context in the model's " + std::to_string(positions) + " positions");
        check_token_ids(ex.context, vocab_size, ex.where + ": context");
        for (size_t e = 0; e < ex.endings.size(); e++)
            check_token_ids(ex.endings[e], vocab_size, ex.where + ": ending " + std::to_string(e));
    }
}

ChoiceResult eval_multiple_choice(GPT2& model, const std::vector<ChoiceExample>& examples, const char* progress,
                                  int32_t first_token) {
    ChoiceResult r;
    const int maxT = model.max_T();
    check_choice_examples(examples, model.config().vocab_size, maxT);
    ProgressLine line(progress, examples.size());
    for (const ChoiceExample& ex : examples) {
        const int B = (int)ex.endings.size();
        if (B > model.max_B())
            throw Error(ex.where + ": " + std::to_string(B) + " endings; the model was built for " +
                        std::to_string(model.max_B()));
        size_t longest = 0;
        for (const auto& e : ex.endings) longest = std::max(longest, e.size());
        // Row b: [first_token] + context (cut from the left to fit) + ending b, padded; weights mark the ending's
        // targets.
        const size_t lead = first_token >= 0 ? 1 : 0;
        const size_t keep = std::min(ex.context.size(), (size_t)maxT + 1 - longest - lead);
        r.contexts_cut += keep < ex.context.size();
        std::vector<int32_t> ctx(lead, first_token);
        ctx.insert(ctx.end(), ex.context.end() - keep, ex.context.end());
        int T = 0;
        for (const auto& e : ex.endings) T = std::max(T, (int)(ctx.size() + e.size()) - 1);
        std::vector<int32_t> x((size_t)B * T, 0), y((size_t)B * T, 0);
        std::vector<float> w((size_t)B * T, 0.0f);
        for (int b = 0; b < B; b++) {
            std::vector<int32_t> seq = ctx;
            seq.insert(seq.end(), ex.endings[b].begin(), ex.endings[b].end());
            for (size_t t = 0; t + 1 < seq.size(); t++) {
                x[(size_t)b * T + t] = seq[t];
                y[(size_t)b * T + t] = seq[t + 1];
                w[(size_t)b * T + t] = t + 1 >= ctx.size() ? 1.0f : 0.0f;
            }
        }
        model.forward(x.data(), B, T, w.data());
        model.loss(y.data(), w.data(), 0.0f, false);
        std::vector<float> losses = model.token_losses();
        int best = 0, best_norm = 0;
        double best_sum = INFINITY, best_mean = INFINITY;
        for (int b = 0; b < B; b++) {
            double s = 0;
            for (int t = 0; t < T; t++) s += losses[(size_t)b * T + t];
            // A non-finite loss compares false both ways: every such example would go to ending 0, unsaid.
            if (!std::isfinite(s))
                throw Error(ex.where + ": the loss of ending " + std::to_string(b) + " is not finite (" +
                            std::to_string(s) + "): the model overflows or holds non-finite values in its forward "
                            "pass");
            const double mean = s / (double)ex.endings[b].size();
            if (s < best_sum) best_sum = s, best = b;
            if (mean < best_mean) best_mean = mean, best_norm = b;
        }
        r.examples++;
        r.correct += best == ex.label;
        r.correct_norm += best_norm == ex.label;
        line.update(r.examples);
    }
    return r;
}

}  // namespace tune
