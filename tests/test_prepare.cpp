// Dataset preparation: documents become tokens + EOT with the right loss mask for each input kind,
// malformed lines name file:line, and the train/validation split is deterministic.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <thread>

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "data/fileio.h"
#include "data/prepare.h"
#include "data/shard.h"
#include "model/rng.h"
#include "tests/test_util.h"

namespace tune::test {
namespace {

using ::testing::HasSubstr;

const Tokenizer& tok() {
    static Tokenizer t = Tokenizer::load("data/gpt2");
    return t;
}

std::vector<int32_t> concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
}

TEST(Prepare, TextFileIsOneDocumentEndingInEotAllCounted) {
    TempDir tmp("prep");
    const std::string d = tmp.path();
    spit(d + "/a.txt", "Hello world.\nSecond line.");
    spit(d + "/b.txt", "Another document");
    PrepareOptions o;
    o.inputs = {d + "/a.txt", d + "/b.txt"};
    o.out_dir = d + "/out";
    o.val_frac = 0;
    o.progress = false;
    PrepareReport r = prepare_dataset(tok(), o);
    Shard s = read_shard(r.train_path, 50257);
    auto want = concat(concat(tok().encode("Hello world.\nSecond line."), {50256}),
                       concat(tok().encode("Another document"), {50256}));
    EXPECT_EQ(s.tokens(), want);
    EXPECT_EQ(s.mask_vector(), std::vector<uint8_t>(want.size(), 1));
    EXPECT_EQ(r.documents, 2u);
    EXPECT_TRUE(r.val_path.empty());
    // Tokens per document, the closing EOT included: the shorter is the median of two, the longer the rest.
    const size_t a = tok().encode("Hello world.\nSecond line.").size() + 1;
    const size_t b = tok().encode("Another document").size() + 1;
    ASSERT_NE(a, b);
    EXPECT_EQ(r.doc_tokens_median, std::min(a, b));
    EXPECT_EQ(r.doc_tokens_p95, std::max(a, b));
    EXPECT_EQ(r.doc_tokens_max, std::max(a, b));
    o.chunk_bytes = 1;  // the first file in two pieces (cut at its line break): still one document of a tokens
    o.out_dir = d + "/pieces";
    const PrepareReport pieces = prepare_dataset(tok(), o);
    EXPECT_EQ(pieces.documents, 2u);
    EXPECT_EQ(pieces.doc_tokens_max, r.doc_tokens_max);
    EXPECT_EQ(pieces.doc_tokens_median, r.doc_tokens_median);
}

TEST(Prepare, PromptCompletionMasksThePrompt) {
    Document doc = document_from_json_line(tok(), R"({"prompt":"Q: capital of France?\nA:","completion":" Paris"})",
                                           "x.jsonl:1", "");
    auto p = tok().encode("Q: capital of France?\nA:"), c = tok().encode(" Paris");
    EXPECT_EQ(doc.tokens, concat(concat(p, c), {50256}));
    std::vector<uint8_t> m(p.size(), 0);
    m.resize(p.size() + c.size() + 1, 1);
    EXPECT_EQ(doc.mask, m);
}

TEST(Prepare, AlpacaUsesTheTemplateAndMasksIt) {
    const std::string t = "I: {instruction}\nIn: {input}\nOut:";
    Document doc = document_from_json_line(tok(), R"({"instruction":"Add","input":"2 3","output":" 5"})", "x:1", t);
    auto p = tok().encode("I: Add\nIn: 2 3\nOut:");
    EXPECT_EQ(doc.tokens, concat(concat(p, tok().encode(" 5")), {50256}));
    size_t counted = 0;
    for (auto x : doc.mask) counted += x;
    EXPECT_EQ(counted, tok().encode(" 5").size() + 1);
    // The default template switches to the no-input form when the input is empty.
    Document d2 = document_from_json_line(tok(), R"({"instruction":"Say hi","input":"","output":"hi"})", "x:2", "");
    EXPECT_EQ(tok().decode(std::vector<int32_t>(d2.tokens.begin(), d2.tokens.end() - 2)),
              fill_template(kDefaultTemplateNoInput, "Say hi", ""));
    // A template without {input} takes examples without one, and refuses to drop one that has it.
    const std::string no_input = "Q: {instruction}\nA:";
    EXPECT_NO_THROW(document_from_json_line(tok(), R"({"instruction":"Say hi","input":"","output":"hi"})", "x:3", no_input));
    EXPECT_THAT(error_of([&] {
                    document_from_json_line(tok(), R"({"instruction":"Add","input":"2 3","output":" 5"})", "x:4", no_input);
                }),
                HasSubstr("x:4: has an \"input\", but the template has no {input} placeholder"));
    // Hugging Face's Alpaca export also holds the formatted example as "text": the fields still decide, so the
    // loss stays on the output (and a prompt/completion record with a "text" alike).
    Document both = document_from_json_line(
        tok(), R"({"instruction":"Add","input":"2 3","output":" 5","text":"I: Add In: 2 3 Out: 5"})", "x:5", t);
    EXPECT_EQ(both.tokens, doc.tokens);
    EXPECT_EQ(both.mask, doc.mask);
    Document pc = document_from_json_line(tok(), R"({"text":"x","prompt":"p:","completion":" c"})", "x:6", "");
    EXPECT_EQ(pc.tokens, concat(concat(tok().encode("p:"), tok().encode(" c")), {50256}));
    EXPECT_EQ(pc.mask[0], 0);
}

TEST(Prepare, MalformedLinesNameFileAndLine) {
    auto err = [](const std::string& line) {
        return error_of([&] { document_from_json_line(tok(), line, "f.jsonl:7", ""); });
    };
    EXPECT_THAT(err("{not json"), HasSubstr("f.jsonl:7: not valid JSON"));
    EXPECT_THAT(err("[1,2]"), HasSubstr("expected a JSON object"));
    EXPECT_THAT(err(R"({"prompt":"x"})"), HasSubstr("missing field \"completion\""));
    EXPECT_THAT(err(R"({"prompt":"x","completion":""})"), HasSubstr("\"completion\" is empty"));
    EXPECT_THAT(err(R"({"text":5})"), HasSubstr("\"text\" is not a string"));
    EXPECT_THAT(err(R"({"foo":"bar"})"), HasSubstr("expected fields \"text\", or \"prompt\"+\"completion\", or "
                                                   "\"instruction\"+\"output\" (with an optional \"input\")"));
    // A number beyond a double is the JSON library's out_of_range, not its parse_error (found by `make fuzz`).
    EXPECT_THAT(err(R"({"text": "a", "n": 1e999})"), HasSubstr("f.jsonl:7: not valid JSON: number overflow parsing '1e999'"));
}

TEST(Prepare, SkipBadCountsAndOtherwiseStops) {
    TempDir tmp("prep");
    const std::string d = tmp.path();
    // The last line's number is beyond a double: bad input like the others, not a failure that stops --skip-bad.
    spit(d + "/x.jsonl", "{\"text\":\"good one\"}\n\nnot json\n{\"text\":\"good two\"}\n{\"prompt\":\"p\"}\n"
                         "{\"text\":\"x\",\"n\":1e999}\n");
    PrepareOptions o;
    o.inputs = {d + "/x.jsonl"};
    o.out_dir = d + "/out";
    o.val_frac = 0;
    o.progress = false;
    EXPECT_THAT(error_of([&] { prepare_dataset(tok(), o); }), HasSubstr("x.jsonl:3: not valid JSON"));
    o.skip_bad = true;
    PrepareReport r = prepare_dataset(tok(), o);
    EXPECT_EQ(r.skipped, 3u);
    EXPECT_EQ(r.documents, 2u);
}

TEST(Prepare, SplitIsDeterministicBySeedAndFraction) {
    TempDir tmp("prep");
    const std::string d = tmp.path();
    std::string lines;
    for (int i = 0; i < 400; i++) lines += "{\"text\":\"document number " + std::to_string(i) + "\"}\n";
    spit(d + "/x.jsonl", lines);
    PrepareOptions o;
    o.inputs = {d + "/x.jsonl"};
    o.val_frac = 0.25;
    o.progress = false;
    o.out_dir = d + "/a";
    PrepareReport a = prepare_dataset(tok(), o);
    o.out_dir = d + "/b";
    PrepareReport b = prepare_dataset(tok(), o);
    EXPECT_EQ(slurp(a.val_path), slurp(b.val_path));
    EXPECT_EQ(slurp(a.train_path), slurp(b.train_path));
    EXPECT_NEAR((double)a.val_docs / 400, 0.25, 0.07);
    o.seed = 2;
    o.out_dir = d + "/c";
    PrepareReport c = prepare_dataset(tok(), o);
    EXPECT_NE(slurp(a.val_path), slurp(c.val_path));
}

// The corpus streams through in chunks (bounded memory): any chunk size gives the same shards, a line or
// document at a time included, and an error in a later chunk leaves no shard and no temporary file behind.
TEST(Prepare, ChunkSizeDoesNotChangeTheShardsAndAFailureLeavesNothing) {
    TempDir tmp("prep");
    const std::string d = tmp.path();
    std::string lines;
    for (int i = 0; i < 300; i++) {
        if (i % 3 == 0) lines += "{\"text\":\"plain document " + std::to_string(i) + "\"}\n";
        if (i % 3 == 1) lines += "{\"prompt\":\"Q" + std::to_string(i) + ":\",\"completion\":\" A\"}\n";
        if (i % 3 == 2) lines += "{\"instruction\":\"Say " + std::to_string(i) + "\",\"input\":\"\",\"output\":\"ok\"}\n";
    }
    spit(d + "/x.jsonl", lines);
    spit(d + "/y.txt", "A text file is one document.");
    PrepareOptions o;
    o.inputs = {d + "/x.jsonl", d + "/y.txt"};
    o.val_frac = 0.2;
    o.progress = false;
    o.out_dir = d + "/whole";
    const PrepareReport whole = prepare_dataset(tok(), o);
    for (size_t chunk : {size_t(1), size_t(100), size_t(4096)}) {
        o.chunk_bytes = chunk;
        o.out_dir = d + "/chunk" + std::to_string(chunk);
        const PrepareReport r = prepare_dataset(tok(), o);
        EXPECT_EQ(slurp(r.train_path), slurp(whole.train_path)) << "chunk " << chunk;
        EXPECT_EQ(slurp(r.val_path), slurp(whole.val_path)) << "chunk " << chunk;
        EXPECT_EQ(r.counted_tokens, whole.counted_tokens);
        EXPECT_EQ(r.input_bytes, whole.input_bytes);
        // The text file, in pieces, is still one document of its whole length.
        EXPECT_EQ(r.doc_tokens_max, whole.doc_tokens_max) << "chunk " << chunk;
        EXPECT_EQ(r.doc_tokens_median, whole.doc_tokens_median) << "chunk " << chunk;
    }
    EXPECT_EQ(whole.documents, 301u);
    EXPECT_EQ(whole.input_bytes, lines.size() + 28);
    spit(d + "/z.jsonl", lines + "not json\n");
    o.inputs = {d + "/z.jsonl"};
    o.chunk_bytes = 100;  // the bad line comes long after the first chunks were written
    o.out_dir = d + "/failed";
    EXPECT_THAT(error_of([&] { prepare_dataset(tok(), o); }), HasSubstr("z.jsonl:301: not valid JSON"));
    EXPECT_TRUE(std::filesystem::is_empty(d + "/failed")) << "a shard or temporary file was left behind";
}

// A plain text file streams in pieces cut only where tokenising the pieces gives the whole text's tokens.
// The rule follows GPT-2's pattern, not its merges: most whitespace pieces happen to give the same tokens
// however they are cut (GPT-2 has few whitespace merges), but "\n\n" is one token. Random texts of awkward
// fragments give the same shards at every chunk size.
TEST(Prepare, PlainTextCutsKeepTheTokensOfTheWholeText) {
    auto split_equals_whole = [](const std::string& a, const std::string& b) {
        return concat(tok().encode(a), tok().encode(b)) == tok().encode(a + b);
    };
    EXPECT_EQ(plain_text_cut("one\n", "two"), 3u);
    EXPECT_TRUE(split_equals_whole("one", "\ntwo"));
    EXPECT_EQ(plain_text_cut("one\r\n", "two"), 4u);
    EXPECT_TRUE(split_equals_whole("one\r", "\ntwo"));
    EXPECT_FALSE(split_equals_whole("one\r\n", "two") && split_equals_whole("one\n\n", "two"))
        << "cutting after the line break: \"\\n\\n\" at a text's end is one piece (and one token)";
    EXPECT_EQ(plain_text_cut("one\n\n", "two"), 4u);
    EXPECT_TRUE(split_equals_whole("one\n", "\ntwo"));
    EXPECT_EQ(plain_text_cut("one \n", "two"), 4u);
    EXPECT_EQ(plain_text_cut("\xc3\xa9\n", "two"), 2u);
    // Lines of other scripts are cut alike (Cyrillic, CJK, a dash); not before Unicode whitespace, a byte-order
    // mark or invalid UTF-8.
    EXPECT_EQ(plain_text_cut("one\n", "\xd0\xbf\xd1\x80\xd0\xb8"), 3u);
    EXPECT_EQ(plain_text_cut("one\n", "\xe6\x97\xa5\xe6\x9c\xac"), 3u);
    EXPECT_EQ(plain_text_cut("one\n", "\xe2\x80\x94 x"), 3u);
    for (const char* no : {"\xe3\x80\x80x", "\xc2\xa0x", "\xc2\x85x", "\xef\xbb\xbfx", "\xff", "\xc3"})
        EXPECT_EQ(plain_text_cut("one\n", no), std::string::npos) << no;
    // Whitespace after the line break: "one \n  two" is "one" " \n " " two" whole, but " " then "\n " cut (the
    // same tokens in GPT-2's vocabulary, which has no such merges; the rule follows the pattern).
    EXPECT_EQ(plain_text_cut("one \n", " two"), std::string::npos);
    EXPECT_EQ(plain_text_cut("one\n", ""), std::string::npos);
    EXPECT_EQ(plain_text_cut("\n", "two"), std::string::npos);  // nothing before the cut

    const std::vector<std::string> parts = {"\n", "\n", "\r\n", " ", "  ", "\t", "word", "Word", "'s", "12", "!?",
                                            "\xc3\xa9t\xc3\xa9", "\xe3\x80\x80", "\xff", "\xc3", ".", "x", "\v", "\f",
                                            "\r", "\xc2\x85", "\xe2\x80\xa8", "\xef\xbb\xbf", "<|endoftext|>",
                                            "\xd0\xbf\xd1\x80\xd0\xb8", "\xe6\x97\xa5\xe6\x9c\xac", "\xe2\x80\x94",
                                            "\xc2\xab", "\xce\xb1\xce\xb2", "\xcc\x81", "\xe2\x80\x8b"};
    Rng rng(7);
    TempDir tmp("prep");
    const std::string d = tmp.path();
    PrepareOptions o;
    o.val_frac = 0.5;  // whole documents go one way or the other, whatever their pieces
    o.progress = false;
    for (int f = 0; f < 6; f++) {
        std::string text;
        while (text.size() < 3000) text += parts[rng.next_u64() % parts.size()];
        if (f % 2) text += "\n";  // with and without a last line break
        o.inputs.push_back(d + "/t" + std::to_string(f) + ".txt");
        spit(o.inputs.back(), text);
    }
    o.out_dir = d + "/whole";
    const PrepareReport whole = prepare_dataset(tok(), o);
    ASSERT_FALSE(whole.val_path.empty());
    EXPECT_EQ(whole.documents, 6u);
    size_t cuts = 0;
    for (size_t chunk : {size_t(1), size_t(7), size_t(500)}) {
        o.chunk_bytes = chunk;
        o.out_dir = d + "/chunk" + std::to_string(chunk);
        const PrepareReport r = prepare_dataset(tok(), o);
        EXPECT_EQ(slurp(r.train_path), slurp(whole.train_path)) << "chunk " << chunk;
        EXPECT_EQ(slurp(r.val_path), slurp(whole.val_path)) << "chunk " << chunk;
        EXPECT_EQ(r.documents, 6u);
        EXPECT_EQ(r.counted_tokens, whole.counted_tokens);
    }
    for (const std::string& in : o.inputs) {  // the texts do have places to cut (else the loop tests nothing)
        const std::string text = slurp(in);
        for (size_t i = text.find('\n'); i != std::string::npos; i = text.find('\n', i + 1)) {
            const size_t eol = text.find('\n', i + 1);
            cuts += plain_text_cut(text.substr(0, i + 1), text.substr(i + 1, eol - i - 1)) != std::string::npos;
        }
    }
    EXPECT_GT(cuts, 20u);
}

// What a user should hear about without the run stopping, and an empty text file, which is refused like an
// empty "text" field: an input given twice, a .txt file holding JSONL, an empty JSONL, temporaries of a killed
// run (removed; a live process's are left alone).
TEST(Prepare, NotesWhatItNoticesAndRefusesAnEmptyTextFile) {
    TempDir tmp("prepnote");
    const std::string d = tmp.path();
    spit(d + "/empty.txt", "");
    spit(d + "/a.txt", "Some text.");
    spit(d + "/chat.txt", "{\"prompt\":\"Q\",\"completion\":\" A\"}\n");
    spit(d + "/none.jsonl", "");
    std::vector<std::string> notes;
    PrepareOptions o;
    o.val_frac = 0;
    o.progress = false;
    o.out_dir = d + "/out";
    o.note = [&](const std::string& s) { notes.push_back(s); };
    o.inputs = {d + "/a.txt"};
    o.out_dir = d + "/a.txt";
    EXPECT_THAT(error_of([&] { prepare_dataset(tok(), o); }), HasSubstr("a.txt: is a file, not a directory"));
    o.out_dir = d + "/out";
    o.inputs = {d + "/a.txt", d + "/empty.txt"};
    EXPECT_THAT(error_of([&] { prepare_dataset(tok(), o); }),
                HasSubstr("empty.txt: empty: a plain text file is one document, and this one has no text"));
    o.skip_bad = true;
    EXPECT_EQ(prepare_dataset(tok(), o).skipped, 1u);
    // Nothing to train on says which way it came to that (it was "all skipped or all in validation" for all three).
    o.inputs = {d + "/empty.txt"};
    EXPECT_THAT(error_of([&] { prepare_dataset(tok(), o); }),
                HasSubstr("no documents left in " + d + "/empty.txt: all 1 were malformed and skipped (--skip-bad)"));
    o.skip_bad = false;
    spit(d + "/blank.jsonl", "\n\n  \n");
    o.inputs = {d + "/blank.jsonl"};
    EXPECT_THAT(error_of([&] { prepare_dataset(tok(), o); }),
                HasSubstr("no documents in " + d + "/blank.jsonl: it is empty or holds only blank lines"));
    o.inputs = {d + "/a.txt"};
    o.val_frac = 0.999999;
    EXPECT_THAT(error_of([&] { prepare_dataset(tok(), o); }),
                HasSubstr("no training documents: all 1 of " + d + "/a.txt went to validation (--val-frac 0.999999)"));
    o.val_frac = 0;

    const pid_t child = fork();
    if (child == 0) _exit(0);
    ASSERT_GT(child, 0);
    waitpid(child, nullptr, 0);  // a process id that is gone
    const std::string host = host_name();
    const std::string dead = d + "/out/train.bin.tmp." + host + "." + std::to_string(child) + ".0";
    const std::string live = d + "/out/val.bin.tmp." + host + "." + std::to_string(getppid()) + ".0";
    const std::string elsewhere = d + "/out/train.bin.tmp.another-host." + std::to_string(child) + ".0";
    spit(dead, "partial");
    spit(live, "partial");
    spit(elsewhere, "partial");  // on a shared file system: its process may be alive there
    notes.clear();
    o.inputs = {d + "/a.txt", d + "/chat.txt", d + "/a.txt", d + "/none.jsonl"};
    const PrepareReport r = prepare_dataset(tok(), o);
    EXPECT_EQ(r.documents, 3u);
    const std::string all = ::testing::PrintToString(notes);
    EXPECT_THAT(all, HasSubstr("a.txt: given 2 times, so its documents are in the shards 2 times"));
    EXPECT_THAT(all, HasSubstr("chat.txt: read as plain text (one document, every token with loss)"));
    EXPECT_THAT(all, HasSubstr("none.jsonl: empty: no documents in it"));
    EXPECT_THAT(all, HasSubstr(dead + ": left by a run that was killed (its process on this host is gone): removed"));
    EXPECT_EQ(notes.size(), 4u) << all;
    EXPECT_FALSE(std::filesystem::exists(dead));
    EXPECT_TRUE(std::filesystem::exists(live));
    EXPECT_TRUE(std::filesystem::exists(elsewhere));

    // A byte-order mark is left out (with a note), so the text's tokens are those without it.
    spit(d + "/bom.txt", "\xEF\xBB\xBFSome text.");
    notes.clear();
    o.inputs = {d + "/bom.txt"};
    o.out_dir = d + "/bom";
    const PrepareReport b = prepare_dataset(tok(), o);
    o.inputs = {d + "/a.txt"};
    o.out_dir = d + "/plain";
    const PrepareReport p = prepare_dataset(tok(), o);
    EXPECT_EQ(slurp(b.train_path), slurp(p.train_path));
    EXPECT_THAT(::testing::PrintToString(notes), HasSubstr("bom.txt: starts with a UTF-8 byte-order mark"));
}

// What a long run meets: a missing input is named before any work (not after hours on the first files, and
// not behind a bad line of an earlier file); a pipe among the inputs leaves the progress bar off instead of
// overrunning it; a stop request (bin/prepare's SIGINT/SIGTERM) ends the run with no file left behind.
TEST(Prepare, MissingInputsFirstPipesWithProgressAndAStopLeaveNothing) {
    TempDir tmp("prep");
    const std::string d = tmp.path();
    std::string lines;
    for (int i = 0; i < 30000; i++) lines += "{\"text\":\"document number " + std::to_string(i) + " of many\"}\n";
    spit(d + "/big.jsonl", lines);  // over the 1 MB a progress bar needs
    spit(d + "/bad.jsonl", "not json\n");
    PrepareOptions o;
    o.val_frac = 0;
    o.out_dir = d + "/out";
    o.inputs = {d + "/bad.jsonl", d + "/missing.jsonl"};
    EXPECT_THAT(error_of([&] { prepare_dataset(tok(), o); }), HasSubstr("missing.jsonl: cannot open (No such file"));
    o.inputs = {d + "/big.jsonl", d};
    EXPECT_THAT(error_of([&] { prepare_dataset(tok(), o); }), HasSubstr(d + ": is a directory, not a file"));
    ASSERT_EQ(::mkfifo((d + "/pipe.txt").c_str(), 0600), 0);
    // A fifth of the file's size again: a bar that counted it against the file sizes alone would run past its end.
    std::thread writer([&] { spit(d + "/pipe.txt", std::string(lines.size() / 5, 'x')); });
    o.inputs = {d + "/big.jsonl", d + "/pipe.txt"};
    o.progress = true;
    PrepareReport r;
    EXPECT_NO_THROW(r = prepare_dataset(tok(), o));
    writer.join();
    EXPECT_EQ(r.documents, 30001u);
    volatile std::sig_atomic_t stop = 1;
    o.inputs = {d + "/big.jsonl"};
    o.out_dir = d + "/stopped";
    o.stop = &stop;
    EXPECT_THAT(error_of([&] { prepare_dataset(tok(), o); }), HasSubstr("interrupted: no shard written"));
    EXPECT_TRUE(std::filesystem::is_empty(d + "/stopped"));
}

// JSON records arriving through a pipe (no .jsonl name): the first line decides, with a note; --format sets it.
// A .json file holding one JSON array (Stanford's alpaca_data.json) is read as its records.
TEST(Prepare, PipesAreReadByTheirFirstLineAndJsonArraysByTheirRecords) {
    TempDir tmp("prep");
    const std::string d = tmp.path();
    const std::string jsonl = "{\"prompt\":\"Q: 2+2?\\nA:\",\"completion\":\" 4\"}\n{\"text\":\"plain words\"}\n";
    auto p = tok().encode("Q: 2+2?\nA:");
    const auto want =
        concat(concat(concat(p, tok().encode(" 4")), {50256}), concat(tok().encode("plain words"), {50256}));
    std::vector<uint8_t> want_mask(p.size(), 0);
    want_mask.resize(want.size(), 1);
    std::vector<std::string> notes;
    PrepareOptions o;
    o.val_frac = 0;
    o.progress = false;
    o.note = [&](const std::string& n) { notes.push_back(n); };
    auto through_pipe = [&](const std::string& bytes, const std::string& out) {
        const std::string fifo = d + "/" + out + ".fifo";
        EXPECT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
        std::thread writer([&] { spit(fifo, bytes); });
        o.inputs = {fifo};
        o.out_dir = d + "/" + out;
        std::string err = error_of([&] { prepare_dataset(tok(), o); });
        writer.join();
        EXPECT_EQ(err, "");
        return read_shard(d + "/" + out + "/train.bin", 50257);
    };
    Shard piped = through_pipe(jsonl, "auto");
    EXPECT_EQ(piped.tokens(), want);
    EXPECT_EQ(piped.mask_vector(), want_mask);
    ASSERT_EQ(notes.size(), 1u);
    EXPECT_THAT(notes[0], HasSubstr("a pipe, whose first line is a JSONL record: read as JSONL"));
    o.format = "text";
    Shard as_text = through_pipe(jsonl, "text");
    EXPECT_EQ(as_text.tokens(), concat(tok().encode(jsonl), {50256}));
    o.format = "auto";
    Shard prose = through_pipe("Just prose.\n", "prose");
    EXPECT_EQ(prose.tokens(), concat(tok().encode("Just prose.\n"), {50256}));
    Shard piped_array = through_pipe("[\n  {\"prompt\": \"Q: 2+2?\\nA:\", \"completion\": \" 4\"},\n"
                                     "  {\"text\": \"plain words\"}\n]\n", "piped_array");
    EXPECT_EQ(piped_array.tokens(), want);
    EXPECT_THAT(notes.back(), HasSubstr("opens a JSON array: read as its records"));
    // The same records as one pretty-printed JSON array.
    spit(d + "/alpaca_data.json", "[\n  {\"prompt\": \"Q: 2+2?\\nA:\", \"completion\": \" 4\"},\n"
                                  "  {\"text\": \"plain words\"}\n]\n");
    o.inputs = {d + "/alpaca_data.json"};
    o.out_dir = d + "/array";
    prepare_dataset(tok(), o);
    Shard array = read_shard(d + "/array/train.bin", 50257);
    EXPECT_EQ(array.tokens(), want);
    EXPECT_EQ(array.mask_vector(), want_mask);
    spit(d + "/bad.json", "[\n  {\"text\": \"a\"},\n  {\"output\": \"b\"}\n]\n");
    o.inputs = {d + "/bad.json"};
    EXPECT_THAT(error_of([&] { prepare_dataset(tok(), o); }), HasSubstr("bad.json: record 2: missing field"));
    // An array that does not parse is one bad value: --skip-bad skips the file.
    spit(d + "/broken.json", "[\n  {\"text\": \"a\"},\n");
    o.inputs = {d + "/broken.json", d + "/alpaca_data.json"};
    EXPECT_THAT(error_of([&] { prepare_dataset(tok(), o); }), HasSubstr("broken.json: not valid JSON: "));
    spit(d + "/huge.json", "[{\"text\": \"a\", \"n\": -1e400}]\n");
    o.inputs = {d + "/huge.json"};
    EXPECT_THAT(error_of([&] { prepare_dataset(tok(), o); }), HasSubstr("huge.json: not valid JSON: number overflow"));
    o.inputs = {d + "/broken.json", d + "/alpaca_data.json"};
    o.skip_bad = true;
    o.out_dir = d + "/skipped";
    const PrepareReport skipped = prepare_dataset(tok(), o);
    EXPECT_EQ(skipped.skipped, 1u);
    EXPECT_EQ(skipped.documents, 2u);
    o.skip_bad = false;
    o.format = "yaml";
    EXPECT_THAT(error_of([&] { prepare_dataset(tok(), o); }), HasSubstr("--format: expected auto, jsonl or text"));
}

// What is no text is refused by name, not tokenised into a document of its bytes; a JSON error says why.
TEST(Prepare, CompressedUtf16AndBinaryInputsAreRefusedAndJsonErrorsSayWhy) {
    TempDir tmp("prep");
    const std::string d = tmp.path();
    PrepareOptions o;
    o.val_frac = 0;
    o.progress = false;
    o.out_dir = d + "/out";
    auto refused = [&](const std::string& name, const std::string& bytes) {
        spit(d + "/" + name, bytes);
        o.inputs = {d + "/" + name};
        return error_of([&] { prepare_dataset(tok(), o); });
    };
    EXPECT_THAT(refused("data.jsonl.gz", std::string("\x1f\x8b\x08\x00\x00\x00", 6)), HasSubstr("is gzip-compressed"));
    EXPECT_THAT(refused("notes.txt.zst", "\x28\xb5\x2f\xfd rest"), HasSubstr("is zstd-compressed"));
    EXPECT_THAT(refused("utf16.txt", std::string("\xff\xfeh\0i\0", 6)), HasSubstr("is UTF-16 text"));
    EXPECT_THAT(refused("nul.txt", std::string("line one\nline\0two\n", 18)),
                HasSubstr("nul.txt:2: a NUL byte: this is no UTF-8 text"));
    EXPECT_THAT(refused("latin1.jsonl", "{\"text\": \"caf\xe9\"}\n"), HasSubstr("latin1.jsonl:1: not valid JSON: "));
    EXPECT_THAT(refused("latin1.jsonl", "{\"text\": \"caf\xe9\"}\n"), HasSubstr("UTF-8"));
    // Refused before any work: a compressed last input is named before a bad line in the first.
    spit(d + "/first.jsonl", "not json\n");
    o.inputs = {d + "/first.jsonl", d + "/data.jsonl.gz"};
    EXPECT_THAT(error_of([&] { prepare_dataset(tok(), o); }), HasSubstr("data.jsonl.gz: is gzip-compressed"));
    EXPECT_TRUE(std::filesystem::is_empty(d + "/out"));
}

// "<|endoftext|>" written out in the text is text (7 tokens): counted, so bin/prepare can say so.
TEST(Prepare, TheEndOfTextNameInTheTextIsCounted) {
    TempDir tmp("prep");
    const std::string d = tmp.path();
    spit(d + "/a.txt", "doc one<|endoftext|>doc two<|endoftext|>");
    spit(d + "/b.jsonl", "{\"text\":\"x<|endoftext|>y\"}\n{\"text\":\"none\"}\n");
    PrepareOptions o;
    o.inputs = {d + "/a.txt", d + "/b.jsonl"};
    o.out_dir = d + "/out";
    o.val_frac = 0;
    o.progress = false;
    const PrepareReport r = prepare_dataset(tok(), o);
    EXPECT_EQ(r.literal_eot, 3u);
    EXPECT_EQ(read_shard(r.train_path, 50257).tokens().size(),
              tok().encode("doc one<|endoftext|>doc two<|endoftext|>").size() + tok().encode("x<|endoftext|>y").size() +
                  tok().encode("none").size() + 3);
}

TEST(PrepareCli, ReportsAndExitCodes) {
    TempDir tmp("prepcli");
    const std::string d = tmp.path();
    spit(d + "/x.jsonl", "{\"prompt\":\"a\",\"completion\":\" b\"}\n");
    CmdResult ok = run_cmd("bin/prepare --quiet --val-frac=0 --out " + d + "/o " + d + "/x.jsonl");
    EXPECT_EQ(ok.rc, 0) << ok.out;
    EXPECT_THAT(ok.out, HasSubstr("prepared 1 document ("));
    spit(d + "/empty.txt", "");
    CmdResult skipped = run_cmd("bin/prepare --quiet --val-frac=0 --skip-bad --out " + d + "/s " + d + "/x.jsonl " + d +
                                "/empty.txt");
    EXPECT_EQ(skipped.rc, 0) << skipped.out;
    EXPECT_THAT(skipped.out, HasSubstr("  skipped 1 malformed line or file (--skip-bad)\n"));
    EXPECT_THAT(ok.out, HasSubstr("(bin/train's document windows, its default for prompt/completion training data, "
                                  "keep a document whole where --seq is at least its length)"));
    EXPECT_EQ(run_cmd("bin/prepare --bogus x").rc, 2);
    EXPECT_EQ(run_cmd("bin/prepare --help").rc, 0);
    CmdResult valued = run_cmd("bin/prepare --quiet=yes " + d + "/x.jsonl");
    EXPECT_EQ(valued.rc, 2) << valued.out;
    EXPECT_THAT(valued.out, HasSubstr("--quiet takes no value, got '--quiet=yes'"));
    for (const char* seed : {"-5", "18446744073709551616", "1e3"}) {
        CmdResult bad = run_cmd(std::string("bin/prepare --seed ") + seed + " " + d + "/x.jsonl");
        EXPECT_EQ(bad.rc, 2) << seed << ": " << bad.out;
        EXPECT_THAT(bad.out, HasSubstr(std::string("--seed: expected an integer in [0, 2^64), got '") + seed + "'"));
    }
    CmdResult missing = run_cmd("bin/prepare --quiet /nonexistent.txt");
    EXPECT_EQ(missing.rc, 2) << missing.out;  // a path that is not there is a usage error, as in every tool
    EXPECT_THAT(missing.out, HasSubstr("input: no such file or directory: /nonexistent.txt"));
    // A single-dash option is no file name; after --, every argument is one; standard input is read once.
    CmdResult dash = run_cmd("bin/prepare --quiet -x " + d + "/x.jsonl");
    EXPECT_EQ(dash.rc, 2) << dash.out;
    EXPECT_THAT(dash.out, HasSubstr("unknown option '-x' (a file of that name: ./-x, or after --)"));
    spit(d + "/-x.jsonl", "{\"text\":\"a file named like an option\"}\n");
    CmdResult after = run_cmd("cd " + d + " && " + std::filesystem::current_path().string() +
                              "/bin/prepare --quiet --val-frac 0 --vocab " + std::filesystem::current_path().string() +
                              "/data/gpt2 --out o4 -- -x.jsonl");
    EXPECT_EQ(after.rc, 0) << after.out;
    EXPECT_THAT(after.out, HasSubstr("prepared 1 document ("));
    // An output directory that is a file is a usage error, as in bin/train.
    CmdResult out_file = run_cmd("bin/prepare --quiet --out " + d + "/x.jsonl " + d + "/x.jsonl");
    EXPECT_EQ(out_file.rc, 2) << out_file.out;
    EXPECT_THAT(out_file.out, HasSubstr("--out " + d + "/x.jsonl: is a file, not a directory"));
    CmdResult twice = run_cmd("echo hi | bin/prepare --quiet --out " + d + "/o5 - -");
    EXPECT_EQ(twice.rc, 2) << twice.out;
    EXPECT_THAT(twice.out, HasSubstr("- (standard input) given twice: it can be read once"));
    // The same pipe under two names; a regular file on standard input may be named twice (it is opened anew).
    CmdResult aliased = run_cmd("echo hi | bin/prepare --quiet --out " + d + "/o6 - /dev/stdin");
    EXPECT_EQ(aliased.rc, 2) << aliased.out;
    EXPECT_THAT(aliased.out,
                HasSubstr("- and /dev/stdin are the same stream (a pipe or terminal): it can be read once"));
    CmdResult pipes = run_cmd("echo hi | bin/prepare --quiet --out " + d + "/o7 /dev/fd/0 /dev/stdin");
    EXPECT_EQ(pipes.rc, 2) << pipes.out;
    EXPECT_THAT(pipes.out, HasSubstr("/dev/fd/0 and /dev/stdin are the same stream"));
    CmdResult file = run_cmd("bin/prepare --quiet --val-frac 0 --out " + d + "/o8 - /dev/stdin < " + d + "/x.jsonl");
    EXPECT_EQ(file.rc, 0) << file.out;
    EXPECT_THAT(file.out, HasSubstr("prepared 2 documents"));
}

// "-" is standard input (a pipe: read by its first line); the notes a user needs reach stderr.
TEST(PrepareCli, StandardInputAndTheNotesOnTheEndOfTextNameAndATemplateFilesLineBreak) {
    TempDir tmp("prepcli");
    const std::string d = tmp.path();
    CmdResult piped =
        run_cmd("printf '{\"text\":\"a<|endoftext|>b\"}\\n' | bin/prepare --quiet --val-frac 0 --out " + d + "/o -");
    EXPECT_EQ(piped.rc, 0) << piped.out;
    EXPECT_THAT(piped.out, HasSubstr("prepared 1 document ("));
    EXPECT_THAT(piped.out, HasSubstr("read as JSONL"));
    EXPECT_THAT(piped.out, HasSubstr("the text holds <|endoftext|> 1 time; it was tokenised as text"));
    spit(d + "/t.txt", "Q: {instruction}\nA:\n");
    spit(d + "/x.jsonl", "{\"instruction\":\"2+2?\",\"output\":\" 4\"}\n");
    CmdResult t = run_cmd("bin/prepare --quiet --val-frac 0 --template-file " + d + "/t.txt --out " + d + "/o2 " + d +
                          "/x.jsonl");
    EXPECT_EQ(t.rc, 0) << t.out;
    EXPECT_THAT(t.out, HasSubstr("t.txt ends in a line break, which ends every prompt"));
    EXPECT_THAT(t.out, ::testing::Not(HasSubstr("<|endoftext|>")));
    // Standard input redirected from a file is a file, but not by a name that says its format: its first line does.
    CmdResult redirected = run_cmd("bin/prepare --quiet --val-frac 0 --out " + d + "/o3 - < " + d + "/x.jsonl");
    EXPECT_EQ(redirected.rc, 0) << redirected.out;
    EXPECT_THAT(redirected.out, HasSubstr("read as JSONL"));
    EXPECT_THAT(redirected.out, ::testing::Not(HasSubstr("read as plain text"))) << "two notes that contradict";
}

// A directory given where a file belongs is named as such, not reported as std::bad_alloc.
TEST(PrepareCli, DirectoryGivenAsAFileIsNamed) {
    TempDir tmp("prepdir");
    const std::string d = tmp.path();
    std::filesystem::create_directory(d + "/notes");
    spit(d + "/x.jsonl", "{\"text\":\"a\"}\n");
    CmdResult in = run_cmd("bin/prepare --quiet --out " + d + "/o " + d + "/notes");
    EXPECT_EQ(in.rc, 2) << in.out;
    EXPECT_THAT(in.out, HasSubstr(d + "/notes: is a directory, not a file"));
    EXPECT_THAT(in.out, ::testing::Not(HasSubstr("bad_alloc")));
    CmdResult t = run_cmd("bin/prepare --quiet --template-file " + d + "/notes --out " + d + "/o " + d + "/x.jsonl");
    EXPECT_EQ(t.rc, 2) << t.out;
    EXPECT_THAT(t.out, HasSubstr(d + "/notes: is a directory, not a file"));
}

// Re-running into the same directory without a validation split removes the old val.bin, so
// --val-data never reads another run's documents; the tool says why there is no val.bin.
TEST(PrepareCli, NoValidationSplitRemovesAStaleValBinAndSaysWhy) {
    TempDir tmp("prepval");
    const std::string d = tmp.path();
    std::string lines;
    for (int i = 0; i < 100; i++) lines += "{\"text\":\"document number " + std::to_string(i) + "\"}\n";
    spit(d + "/many.jsonl", lines);
    spit(d + "/a.txt", "A single note.");
    CmdResult first = run_cmd("bin/prepare --quiet --val-frac 0.2 --out " + d + "/o " + d + "/many.jsonl");
    ASSERT_EQ(first.rc, 0) << first.out;
    ASSERT_TRUE(std::filesystem::exists(d + "/o/val.bin"));
    CmdResult zero = run_cmd("bin/prepare --quiet --val-frac 0 --out " + d + "/o " + d + "/a.txt");
    ASSERT_EQ(zero.rc, 0) << zero.out;
    EXPECT_FALSE(std::filesystem::exists(d + "/o/val.bin")) << zero.out;
    EXPECT_THAT(zero.out, HasSubstr("no validation split (--val-frac 0)"));
    EXPECT_THAT(zero.out, HasSubstr("removed " + d + "/o/val.bin of an earlier run"));
    // One document at the default fraction: none drawn for validation (seed 1), and the tool says why.
    CmdResult one = run_cmd("bin/prepare --quiet --out " + d + "/o " + d + "/a.txt");
    ASSERT_EQ(one.rc, 0) << one.out;
    EXPECT_FALSE(std::filesystem::exists(d + "/o/val.bin"));
    EXPECT_THAT(one.out, HasSubstr("no validation split: 1 document, none drawn for validation at --val-frac 0.05"));
    EXPECT_THAT(one.out, ::testing::Not(HasSubstr("removed")));  // nothing stale this time
}

// The library does the same for callers other than the tool.
TEST(Prepare, NoValidationSplitRemovesAStaleValBin) {
    TempDir tmp("prepval");
    const std::string d = tmp.path();
    std::filesystem::create_directory(d + "/out");
    spit(d + "/out/val.bin", "old");
    spit(d + "/a.txt", "A single note.");
    PrepareOptions o;
    o.inputs = {d + "/a.txt"};
    o.out_dir = d + "/out";
    o.val_frac = 0;
    o.progress = false;
    PrepareReport r = prepare_dataset(tok(), o);
    EXPECT_TRUE(r.val_path.empty());
    EXPECT_EQ(r.removed_stale_val, d + "/out/val.bin");
    EXPECT_FALSE(std::filesystem::exists(d + "/out/val.bin"));
}

// A template without {instruction} would drop every instruction: a usage error naming the flag and value.
TEST(PrepareCli, TemplateWithoutInstructionIsAUsageError) {
    TempDir tmp("preptmpl");
    const std::string d = tmp.path();
    spit(d + "/alp.jsonl", "{\"instruction\":\"Add\",\"input\":\"2 3\",\"output\":\" 5\"}\n"
                           "{\"instruction\":\"Say hi\",\"output\":\" hi\"}\n");
    CmdResult r = run_cmd("bin/prepare --quiet --val-frac 0 --template 'no placeholders' --out " + d + "/o " + d +
                          "/alp.jsonl");
    EXPECT_EQ(r.rc, 2) << r.out;
    EXPECT_THAT(r.out, HasSubstr("--template: the template 'no placeholders' has no {instruction} placeholder"));
    EXPECT_FALSE(std::filesystem::exists(d + "/o/train.bin"));
    spit(d + "/t.txt", "Input: {input}\nAnswer:");
    CmdResult f = run_cmd("bin/prepare --quiet --val-frac 0 --template-file " + d + "/t.txt --out " + d + "/o " + d +
                          "/alp.jsonl");
    EXPECT_EQ(f.rc, 2) << f.out;
    EXPECT_THAT(f.out, HasSubstr("--template-file " + d + "/t.txt: the template 'Input: {input}"));
    CmdResult both = run_cmd("bin/prepare --quiet --template 'Do: {instruction}' --template-file " + d + "/t.txt --out " +
                             d + "/o " + d + "/alp.jsonl");
    EXPECT_EQ(both.rc, 2) << both.out;
    EXPECT_THAT(both.out, HasSubstr("--template and --template-file: give one, not both"));
    CmdResult ok = run_cmd("bin/prepare --quiet --val-frac 0 --template 'Do: {instruction} {input} =>' --out " + d +
                           "/o " + d + "/alp.jsonl");
    EXPECT_EQ(ok.rc, 0) << ok.out;
    PrepareOptions o;
    o.inputs = {d + "/alp.jsonl"};
    o.out_dir = d + "/lib";
    o.template_str = "no placeholders";
    o.progress = false;
    EXPECT_THAT(error_of([&] { prepare_dataset(tok(), o); }), HasSubstr("has no {instruction} placeholder"));
}

// The tools find the shipped vocabulary (data/gpt2) beside themselves when run from another directory;
// a vocabulary given explicitly that does not exist is still an error naming it.
TEST(PrepareCli, FindsTheShippedVocabularyFromAnotherDirectory) {
    TempDir tmp("prepcwd");
    const std::string d = tmp.path(), root = std::filesystem::current_path().string();
    spit(d + "/x.jsonl", "{\"prompt\":\"a\",\"completion\":\" b\"}\n");
    CmdResult ok = run_cmd("cd " + d + " && " + root + "/bin/prepare --quiet --val-frac 0 --out o x.jsonl");
    EXPECT_EQ(ok.rc, 0) << ok.out;
    CmdResult bad = run_cmd("cd " + d + " && " + root + "/bin/prepare --quiet --vocab nowhere --out o x.jsonl");
    EXPECT_EQ(bad.rc, 2) << bad.out;  // a folder named on the command line that is not there
    EXPECT_THAT(bad.out, HasSubstr("--vocab: no such directory: nowhere (here, nor one holding encoder.json above "
                                   "the program's folder)"));
    std::filesystem::create_directory(d + "/empty");  // there, but without the vocabulary: bad data
    CmdResult empty = run_cmd("cd " + d + " && " + root + "/bin/prepare --quiet --vocab empty --out o x.jsonl");
    EXPECT_EQ(empty.rc, 1) << empty.out;
    EXPECT_THAT(empty.out, HasSubstr("empty/encoder.json: cannot open"));
    CmdResult file = run_cmd("cd " + d + " && " + root + "/bin/prepare --quiet --vocab x.jsonl --out o x.jsonl");
    EXPECT_EQ(file.rc, 2) << file.out;
    EXPECT_THAT(file.out, HasSubstr("--vocab: x.jsonl: is a file, not a directory"));
}

}  // namespace
}  // namespace tune::test
