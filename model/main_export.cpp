// bin/export: converts GPT-2 weights between formats. See bin/export --help.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "data/fileio.h"
#include "train/cli.h"
#include "kernels/backend.h"
#include "model/hf_gpt2.h"
#include "model/llmc.h"
#include "model/weights.h"
#include "train/trainer.h"

namespace {

const char* kHelp =
    "usage: bin/export WEIGHTS [--adapter FILE] [--hf DIR] [--llmc FILE [--llmc-bf16]]\n"
    "Reads GPT-2 weights and writes them in other formats (at least one of --hf, --llmc).\n"
    "\n"
    "WEIGHTS is anything bin/train --init reads, recognised by its content:\n"
    "  a tune.cu checkpoint (weights or resume; only the weights are exported),\n"
    "  a Hugging Face GPT-2 directory (config.json + model.safetensors) or its model.safetensors,\n"
    "  an llm.c model file (gpt2_124M.bin: fp32, or gpt2_124M_bf16.bin: bf16).\n"
    "\n"
    "options:\n"
    "  --hf DIR      write DIR/model.safetensors (float32, Hugging Face names and layout) and DIR/config.json;\n"
    "                transformers.GPT2LMHeadModel.from_pretrained(DIR) loads it. DIR is created if needed and\n"
    "                those two files are replaced; nothing else in DIR is touched (copy the tokenizer files\n"
    "                of the original model there yourself if you need them)\n"
    "  --llmc FILE   write an llm.c model file, version 3 (float32), which llm.c's CPU train_gpt2 loads\n"
    "  --llmc-bf16   write it as version 5 (bfloat16, rounded to nearest even) instead, which llm.c's CUDA\n"
    "                train_gpt2cu loads in its default bf16 build\n"
    "  --adapter F   a LoRA adapter checkpoint (bin/train's adapter.ckpt) to merge into WEIGHTS first\n"
    "                (W + alpha/r B A); models with virtual tokens cannot be exported to either format\n"
    "  --help        this text\n"
    "\n"
    "The conversion is exact for float32 input (float16/bfloat16 input is widened exactly to float32).\n"
    "Exit status: 0 done, 1 a file could not be read or written, 2 bad command line (a file named there that does\n"
    "not exist included).\n";

struct ExportArgs {
    std::string input, hf_dir, llmc_file, adapter;
    bool llmc_bf16 = false;
};

// The files reading WEIGHTS opens: the file itself (and, for a Hugging Face model.safetensors, the config.json
// beside it), or a Hugging Face directory's config.json, shard index and safetensors files.
std::vector<std::string> files_read(const std::string& input) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (!fs::is_directory(input, ec)) {
        std::vector<std::string> out = {input};
        if (fs::path(input).extension() == ".safetensors") out.push_back(tune::directory_of(input) + "/config.json");
        return out;
    }
    std::vector<std::string> out = {input + "/config.json", input + "/model.safetensors",
                                    input + "/model.safetensors.index.json"};
    for (fs::directory_iterator it(input, ec), end; !ec && it != end; it.increment(ec))
        if (it->path().extension() == ".safetensors") out.push_back(it->path().string());
    return out;
}

// Whether two paths name one file, whether it exists yet or not ("d//x" and "d/x" are one place to write).
bool same_place(const std::string& a, const std::string& b) {
    std::error_code ea, eb;
    if (tune::same_file(a, b)) return true;
    const auto ca = std::filesystem::weakly_canonical(a, ea), cb = std::filesystem::weakly_canonical(b, eb);
    return !ea && !eb && ca == cb;
}

// False when --help was asked for.
bool parse(int argc, char** argv, ExportArgs& a) {
    for (int i = 1; i < argc; i++) {
        std::string arg = argv[i];
        std::string given;  // --flag=value, as bin/train takes it, or --flag value
        bool has_given = tune::split_inline_value(&arg, &given);
        auto value = [&]() -> std::string {
            if (has_given) {
                has_given = false;
                return given;
            }
            if (i + 1 >= argc) throw tune::UsageError(arg + ": expects a value");
            return argv[++i];
        };
        // '' (an unset variable) would read as not given: nothing merged, or one export fewer, with exit 0.
        auto nonempty = [&](const char* metavar) {
            std::string v = value();
            if (v.empty()) throw tune::UsageError(arg + ": empty (an unset variable?); give " + metavar);
            return v;
        };
        if (arg == "--help" || arg == "-h") {
            if (has_given) throw tune::UsageError("--help takes no value");
            return false;
        }
        if (arg == "--hf") {
            a.hf_dir = nonempty("DIR");
        } else if (arg == "--llmc") {
            a.llmc_file = nonempty("FILE");
        } else if (arg == "--llmc-bf16") {
            a.llmc_bf16 = true;
        } else if (arg == "--adapter") {
            a.adapter = nonempty("FILE");
        } else if (arg.size() > 1 && arg[0] == '-') {
            throw tune::UsageError("unknown option '" + arg + "' (see --help)");
        } else if (a.input.empty()) {
            a.input = arg;
        } else {
            throw tune::UsageError("one input only: got '" + a.input + "' and '" + arg + "'");
        }
        if (has_given) throw tune::UsageError(arg + " takes no value, got '" + arg + "=" + given + "'");
    }
    if (a.input.empty()) throw tune::UsageError("no input weights given (see --help)");
    tune::require_path("input weights", a.input);
    tune::require_output_dir("--hf", a.hf_dir);
    // An --llmc file in the --hf directory is written after that directory is made.
    const auto folder = [](const std::string& p) {
        std::error_code ec;
        auto f = std::filesystem::weakly_canonical(p.empty() ? "." : p, ec).lexically_normal();
        return f.has_filename() ? f : f.parent_path();  // "d/" names the folder "d"
    };
    tune::require_output_file("--llmc", a.llmc_file,
                              !a.hf_dir.empty() && !a.llmc_file.empty() &&
                                  folder(std::filesystem::path(a.llmc_file).parent_path().string()) == folder(a.hf_dir));
    tune::require_file("--adapter", a.adapter, "an adapter.ckpt written by bin/train");
    if (a.hf_dir.empty() && a.llmc_file.empty())
        throw tune::UsageError("nothing to write: give --hf DIR and/or --llmc FILE");
    // Virtual tokens have no place in either format: said before the weights are read (and merged), naming the
    // file that brings them.
    if (!a.adapter.empty()) {
        const tune::PeftConfig p = tune::checkpoint_peft(a.adapter);
        if (p.virtual_tokens() > 0)
            throw tune::UsageError("--adapter " + a.adapter + ": " + tune::virtual_name(p.virt) + " virtual tokens (P=" +
                                   std::to_string(p.n_virtual) + "), which cannot be merged into weights (only LoRA "
                                   "can) nor held by a Hugging Face GPT-2 or an llm.c file: export the base alone "
                                   "and keep the adapter beside it");
    } else if (tune::weights_format(a.input) == tune::WeightsFormat::tune_checkpoint) {
        const tune::PeftConfig p = tune::checkpoint_peft(a.input);
        if (p.virtual_tokens() > 0)
            throw tune::UsageError(a.input + ": holds " + tune::virtual_name(p.virt) + " virtual tokens (P=" +
                                   std::to_string(p.n_virtual) + "), which neither a Hugging Face GPT-2 nor an llm.c "
                                   "file can hold: export the base weights the run started from (its --init), and "
                                   "keep the run's adapter.ckpt beside them");
    }
    if (a.llmc_bf16 && a.llmc_file.empty()) throw tune::UsageError("--llmc-bf16 says how to write --llmc FILE: give it");
    // An output over the input would replace the weights being read with another format (or half of them), and
    // two outputs on one file would leave only the second.
    const std::vector<std::string> read = files_read(a.input);
    if (!a.llmc_file.empty()) {
        if (same_place(a.input, a.llmc_file))
            throw tune::UsageError("--llmc " + a.llmc_file + " is the input itself: write the export elsewhere");
        for (const std::string& f : read)
            if (same_place(f, a.llmc_file))
                throw tune::UsageError("--llmc " + a.llmc_file + " would replace " + f + ", which the input " +
                                       a.input + " is read from: write the export elsewhere");
    }
    if (!a.hf_dir.empty())
        for (const std::string& f : {a.hf_dir, a.hf_dir + "/model.safetensors", a.hf_dir + "/config.json"}) {
            for (const std::string& r : read)
                if (same_place(r, f) || same_place(a.input, f))
                    throw tune::UsageError("--hf " + a.hf_dir + " holds the input " + a.input +
                                           ": write the export to another directory");
            if (!a.llmc_file.empty() && same_place(f, a.llmc_file))
                throw tune::UsageError("--llmc " + a.llmc_file + " is a file of the --hf " + a.hf_dir +
                                       " export: give each export its own place");
        }
    if (!a.adapter.empty() && (same_place(a.adapter, a.llmc_file) ||
                               (!a.hf_dir.empty() && same_place(a.adapter, a.hf_dir + "/model.safetensors"))))
        throw tune::UsageError("the export would overwrite --adapter " + a.adapter);
    return true;
}

}  // namespace

int main(int argc, char** argv) {
    return tune::run_tool("export", [&]() -> int {
        ExportArgs args;
        if (!parse(argc, argv, args)) {
            std::fputs(kHelp, stdout);
            return 0;
        }
        const tune::WeightsFormat format = tune::weights_format(args.input);
        const tune::ModelConfig cfg = tune::weights_config(args.input);
        // Export needs only the parameters: a one-token model on the CPU, with no gradient buffers.
        tune::LoadedModel m = tune::load_model(args.input, "cpu", "fp32", 1, 1, args.adapter);
        tune::GPT2& model = *m.model;
        std::printf("export: read %s (%s, %s)%s%s%s\n", args.input.c_str(), tune::weights_format_name(format),
                    cfg.describe().c_str(), args.adapter.empty() ? "" : " and merged the adapter ",
                    args.adapter.c_str(), args.adapter.empty() ? "" : " into it");
        if (!args.hf_dir.empty()) {
            tune::export_hf(model, args.hf_dir);
            std::printf("export: wrote %s/model.safetensors and %s/config.json\n", args.hf_dir.c_str(),
                        args.hf_dir.c_str());
        }
        if (!args.llmc_file.empty()) {
            tune::export_llmc(model, args.llmc_file, args.llmc_bf16);
            std::printf("export: wrote %s (llm.c version %s)\n", args.llmc_file.c_str(),
                        args.llmc_bf16 ? "5, bfloat16" : "3, float32");
        }
        return 0;
    });
}
