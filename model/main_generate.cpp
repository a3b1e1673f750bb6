// bin/generate: continue a prompt with a trained model, streaming tokens as they are chosen.
#include <algorithm>
#include <cstdio>

#include "data/fileio.h"
#include "data/tokenizer.h"
#include "model/sampling.h"
#include "train/cli.h"
#include "train/trainer.h"

int main(int argc, char** argv) {
    using namespace tune;
    return tune::run_tool("generate", [&]() -> int {
        std::string weights, adapter, prompt, prompt_file, device = "auto", vocab = kDefaultVocab;
        int max_new = 100, samples = 1;
        uint64_t seed = 1;
        SamplingConfig sc;
        Cli cli("usage: bin/generate --model WEIGHTS [--prompt TEXT | --prompt-file F] [options]\n"
                "Continues the prompt with the model (KV cache: each new token costs one position), stopping at\n"
                "<|endoftext|>, after --max-new tokens, or when the model's context (its block_size positions less\n"
                "any virtual tokens of a prompt-tuned model, prompt included) is full, which it notes on stderr.\n"
                "No prompt (or an empty one) starts a fresh document: <|endoftext|>. The text '<|endoftext|>' typed\n"
                "in a prompt is plain text, not that token.");
        cli.option("--model", "WEIGHTS", "weights: tune.cu checkpoint, Hugging Face GPT-2 directory, or llm.c .bin", &weights);
        bool have_prompt = false;  // --prompt '' is a prompt too, so emptiness cannot tell
        cli.custom("--prompt", "TEXT", "the prompt", "(none)", [&](const std::string& v) {
            prompt = v;
            have_prompt = true;
        }, /*empty_ok=*/true);
        cli.option("--prompt-file", "F", "read the prompt from a file ('-': standard input), every byte of it: a "
                   "final line break too", &prompt_file);
        bool eot_first = false, no_eot_first = false;
        cli.flag("--eot-first", "put <|endoftext|> before the prompt, as a model fine-tuned with --windows documents, "
                 "single or isolated saw every example (and GPT-2 every document after the first); the default for a "
                 "model (or adapter) whose checkpoint says it was trained so", &eot_first);
        cli.flag("--no-eot-first", "the prompt alone, also for a model trained on document windows", &no_eot_first);
        cli.option("--max-new", "N", "most new tokens per sample", &max_new, 1, 1 << 20);
        cli.option("--temperature", "T", "softmax temperature (0: greedy)", &sc.temperature, 0, 100);
        cli.option("--top-k", "K", "sample among the K most likely tokens (0: all)", &sc.top_k, 0, 1 << 20);
        cli.option("--top-p", "P", "sample within the smallest set of probability mass P (1: all)", &sc.top_p, 1e-6,
                   1);
        cli.option("--samples", "N", "how many continuations", &samples, 1, 1000);
        cli.option("--seed", "S", "sampling seed", &seed);
        cli.option("--adapter", "FILE", "an adapter checkpoint (LoRA, virtual tokens: bin/train's adapter.ckpt) on top "
                   "of --model", &adapter);
        cli.option("--device", "cpu|cuda|auto", "backend", &device);
        cli.option("--vocab", "DIR", "GPT-2 vocabulary (encoder.json, vocab.bpe)", &vocab);
        if (!cli.parse(argc, argv)) {
            std::fputs(cli.help().c_str(), stdout);
            return 0;
        }
        if (weights.empty()) throw UsageError("--model: which weights? (see --help)");
        if (eot_first && no_eot_first) throw UsageError("--eot-first and --no-eot-first: give one, not both");
        if (have_prompt && !prompt_file.empty())
            throw UsageError("--prompt and --prompt-file: give one, not both (the prompt is '" + prompt + "', the file " +
                             prompt_file + ")");
        require_path("--model", weights);
        require_file("--adapter", adapter, "an adapter.ckpt written by bin/train");
        if (prompt_file == "-")
            require_stdin("--prompt-file");
        else
            require_file("--prompt-file", prompt_file, "a text file");
        if (!prompt_file.empty()) {
            std::vector<uint8_t> b = read_file_bytes(prompt_file == "-" ? "/dev/stdin" : prompt_file);
            prompt.assign(b.begin(), b.end());
        }
        Tokenizer tok = Tokenizer::load(vocab);
        std::vector<int32_t> ids = tok.encode(prompt);
        LoadedModel m = load_model(weights, device, "fp32", 1, 0, adapter);
        // Asked as it was trained: a plain prompt scored 63% against 96% there (docs/finetuning.md).
        const bool eot_auto = m.trained_on.document_windows() && !eot_first && !no_eot_first && !ids.empty();
        const std::string eot_why = eot_first ? "--eot-first"
                                    : eot_auto ? m.trained_on_file + " was trained on document windows"
                                               : "no prompt";
        eot_first = eot_first || eot_auto;
        if (ids.empty() || eot_first) ids.insert(ids.begin(), tok.eot_token());  // a fresh document starts here
        if ((prompt.empty() || eot_first) && tok.eot_token() >= m.model->config().vocab_size)
            throw UsageError(eot_why + ", and the model's " + std::to_string(m.model->config().vocab_size) +
                             " tokens hold no <|endoftext|> (id " + std::to_string(tok.eot_token()) +
                             ") to start a fresh document from" + (eot_first ? "" : ": give --prompt"));
        if (eot_auto)
            std::fprintf(stderr, "note: %s: the prompt goes after <|endoftext|>, as its examples did (--no-eot-first: "
                         "the prompt alone)\n", eot_why.c_str());
        if (eot_first && !prompt.empty() && (int)ids.size() > m.model->max_T())  // the count check_prompt would give
            throw Error("the prompt has " + std::to_string(ids.size() - 1) + " tokens, and the <|endoftext|> put "
                        "before it (" + eot_why + ") makes " + std::to_string(ids.size()) + ", more than the "
                        "model's context of " + std::to_string(m.model->max_T()) + " positions: shorten the prompt" +
                        (eot_auto ? " or give --no-eot-first" : ""));
        check_prompt(*m.model, ids);  // before the prompt is printed: no partial output on an error
        // The last token written is predicted from this many positions (virtual tokens first); those past the ones
        // that trained never did.
        const int P = m.model->virtual_tokens(), trained = m.trained_on.positions;
        const int reach = P + (int)std::min<size_t>(ids.size() + (size_t)max_new - 1, (size_t)m.model->max_T());
        if (trained > 0 && reach > trained)
            std::fprintf(stderr, "note: %s trained %d positions; %sthe prompt (%s%s) and --max-new %d reach %d, and "
                         "past %d the text comes from positions that never trained\n", m.trained_on_file.c_str(),
                         trained, P ? (std::to_string(P) + " virtual tokens, ").c_str() : "",
                         counted(ids.size(), "token", "tokens").c_str(),
                         eot_first || prompt.empty() ? " with <|endoftext|>" : "", max_new, reach, trained);
        // A model with tokens the tokenizer lacks (a fine-tune that added a pad token): those have no text.
        sc.vocab = tok.vocab_size();
        if (m.model->config().vocab_size > tok.vocab_size())
            std::fprintf(stderr, "note: the model has %d tokens, the tokenizer (--vocab %s) %d: ids from %d on have no "
                         "text and are never sampled\n", m.model->config().vocab_size, vocab.c_str(), tok.vocab_size(),
                         tok.vocab_size());
        // Bytes as they are (fwrite, not fputs): a NUL in the prompt or a token is output too.
        auto out = [](const std::string& bytes) { std::fwrite(bytes.data(), 1, bytes.size(), stdout); };
        if (samples > 1 && sc.temperature <= 0)
            std::fprintf(stderr, "note: --temperature 0 always picks the likeliest token: the %d samples are the same "
                         "text (give a temperature above 0 for different ones)\n", samples);
        Rng rng(seed);
        for (int s = 0; s < samples; s++) {
            if (samples > 1) std::printf("--- sample %d ---\n", s + 1);
            out(prompt);
            GenerateStop why = GenerateStop::max_new;
            std::vector<int32_t> got;
            try {
                got = generate(
                    *m.model, ids, max_new, sc, rng, tok.eot_token(),
                    [&](int32_t t) {
                        out(tok.decode(&t, 1));
                        std::fflush(stdout);
                    },
                    &why);
            } catch (const std::exception&) {
                std::printf("\n");  // the text streamed so far ends its line; the error (stderr) says why it stopped
                std::fflush(stdout);
                throw;
            }
            std::printf("\n");
            std::fflush(stdout);
            if (why == GenerateStop::context_full)
                std::fprintf(stderr, "note: stopped at the model's context of %d tokens after %s, fewer than "
                             "--max-new %d\n", m.model->max_positions(),
                             counted(got.size(), "new token", "new tokens").c_str(), max_new);
        }
        return 0;
    });
}
