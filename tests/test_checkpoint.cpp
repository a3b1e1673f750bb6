// Checkpoints: byte-identical round trips, one specific error per corrupted header field and per
// truncation point, and a previous checkpoint that survives a failed write.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>

#include "data/fileio.h"
#include "data/shard.h"
#include "tests/model_util.h"
#include "tests/test_util.h"
#include "train/checkpoint.h"

namespace tune::test {
namespace {

using ::testing::HasSubstr;

class CheckpointTest : public ::testing::Test {
   protected:
    void SetUp() override {
        dir = tmp.path();
        be = make_cpu_backend(DType::f32);
        model = std::make_unique<GPT2>(small_config(), *be, 2, 5);
        model->init_random(7);
        path = dir + "/a.ckpt";
        save_checkpoint(path, *model, nullptr, nullptr);
        bytes = slurp(path);
    }
    std::string load_error(const std::string& b) {
        spit(dir + "/bad.ckpt", b);
        GPT2 m(small_config(), *be, 2, 5);
        return error_of([&] { load_checkpoint(dir + "/bad.ckpt", m, nullptr, nullptr); });
    }
    uint32_t header_len() const { return load_u32(reinterpret_cast<const uint8_t*>(bytes.data()) + 12); }
    // The file as written before checksums (or edited by hand): the field blanked out, the JSON still valid.
    static std::string without_checksum(std::string b) {
        const size_t at = b.find("\"checksum\":\"");
        EXPECT_NE(at, std::string::npos);
        if (at != std::string::npos) b.replace(at, 30, std::string(30, ' '));  // "checksum":"<16 hex>",
        return b;
    }

    TempDir tmp{"ckpt"};
    std::string dir, path, bytes;
    std::unique_ptr<Backend> be;
    std::unique_ptr<GPT2> model;
};

TEST_F(CheckpointTest, WeightsRoundTripIsByteIdentical) {
    GPT2 other(small_config(), *be, 2, 5);
    other.init_random(99);
    load_checkpoint(path, other, nullptr, nullptr);
    save_checkpoint(dir + "/b.ckpt", other, nullptr, nullptr);
    EXPECT_EQ(slurp(dir + "/b.ckpt"), bytes);
    for (size_t i = 0; i < model->params().table().size(); i++)
        EXPECT_EQ(get_tensor(*model, model->params(), i), get_tensor(other, other.params(), i));
}

// The float data starts 64-byte aligned (the header is padded with spaces); a file whose header was not
// padded, as before 2026-11-30, with its data at an odd offset, still loads the same values.
TEST_F(CheckpointTest, DataIsAlignedAndUnpaddedOldFilesStillLoad) {
    EXPECT_EQ((16 + header_len()) % 64, 0u);
    std::string h = without_checksum(bytes).substr(16, header_len());
    while (!h.empty() && h.back() == ' ') h.pop_back();
    if ((16 + h.size()) % 4 == 0) h += ' ';
    std::string old = bytes.substr(0, 16) + h + bytes.substr(16 + header_len());
    store_u32(reinterpret_cast<uint8_t*>(&old[12]), (uint32_t)h.size());
    ASSERT_NE((16 + h.size()) % 4, 0u);
    spit(dir + "/old.ckpt", old);
    GPT2 other(small_config(), *be, 2, 5);
    other.init_random(99);
    load_checkpoint(dir + "/old.ckpt", other, nullptr, nullptr);
    for (size_t i = 0; i < model->params().table().size(); i++)
        EXPECT_EQ(get_tensor(*model, model->params(), i), get_tensor(other, other.params(), i));
}

TEST_F(CheckpointTest, ResumeRoundTripKeepsOptimizerAndState) {
    AdamW opt(*model, AdamWConfig{});
    std::vector<int32_t> x = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, y = {2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
    std::vector<float> w(10, 1.0f);
    for (int s = 0; s < 2; s++) {
        model->zero_grads();
        model->forward(x.data(), 2, 5);
        model->loss(y.data(), w.data(), 0.1f, true);
        model->backward();
        opt.step(1e-3f, 1.0f);
    }
    TrainState st;
    st.step = 2;
    st.rng = 0xDEADBEEFCAFEull;
    st.loader = {3, 17};
    st.loss_scale = 4096;
    st.loss_scaling = true;
    st.skipped_steps = 1;
    st.bad_in_a_row = 1;
    save_checkpoint(dir + "/r.ckpt", *model, &opt, &st);

    GPT2 m2(small_config(), *be, 2, 5);
    AdamW opt2(m2, AdamWConfig{});
    TrainState st2;
    load_checkpoint(dir + "/r.ckpt", m2, &opt2, &st2);
    EXPECT_EQ(st2.step, 2u);
    EXPECT_EQ(st2.rng, 0xDEADBEEFCAFEull);
    EXPECT_EQ(st2.loader.epoch, 3u);
    EXPECT_EQ(st2.loader.cursor, 17u);
    EXPECT_EQ(st2.loss_scale, 4096);
    EXPECT_TRUE(st2.loss_scaling);
    EXPECT_EQ(st2.skipped_steps, 1u);
    EXPECT_EQ(st2.bad_in_a_row, 1u);
    EXPECT_EQ(opt2.t(), 2);
    save_checkpoint(dir + "/r2.ckpt", m2, &opt2, &st2);
    EXPECT_EQ(slurp(dir + "/r2.ckpt"), slurp(dir + "/r.ckpt"));
}

// Resume state edited by hand (no checksum): numbers an int cannot hold are named, not narrowed (a float
// converted to int past its range is undefined behaviour; a 64-bit step count would wrap).
TEST_F(CheckpointTest, ResumeStateNumbersOutOfRangeAreNamed) {
    AdamW opt(*model, AdamWConfig{});
    opt.set_t(2);
    TrainState st;
    st.step = 2;
    save_checkpoint(dir + "/r.ckpt", *model, &opt, &st);
    const std::string good = without_checksum(slurp(dir + "/r.ckpt"));
    auto edited = [&](const std::string& key, const std::string& value) {
        std::string b = good;
        const size_t at = b.find("\"" + key + "\":");
        EXPECT_NE(at, std::string::npos) << key;
        const size_t v = at + key.size() + 3;
        const size_t end = b[v] == '[' ? b.find(']', v) + 1 : b.find_first_of(",}", v);
        const uint32_t len = load_u32(reinterpret_cast<const uint8_t*>(b.data()) + 12);
        b.replace(v, end - v, value);
        store_u32(reinterpret_cast<uint8_t*>(&b[12]), (uint32_t)(len + value.size() - (end - v)));
        spit(dir + "/bad.ckpt", b);
        GPT2 m(small_config(), *be, 2, 5);
        AdamW o(m, AdamWConfig{});
        TrainState s;
        return error_of([&] { load_checkpoint(dir + "/bad.ckpt", m, &o, &s); });
    };
    const size_t n = model->grads().table().size();
    std::string offsets = "[1e300";
    for (size_t i = 1; i < n; i++) offsets += ",0";
    offsets += "]";
    EXPECT_THAT(edited("opt_t_offsets", offsets), HasSubstr("state field 'opt_t_offsets' holds 1e+300, expected step numbers"));
    EXPECT_THAT(edited("opt_t", "4294967298"), HasSubstr("state field 'opt_t' is 4294967298, more steps than an int counts"));
    // A step of 2^32 + 2 passed bin/train's (int) comparisons as 2 (found by a review of the fuzz targets).
    EXPECT_THAT(edited("step", "4294967298"), HasSubstr("state field 'step' is 4294967298, more steps than an int counts"));
    EXPECT_THAT(edited("loss_scale", "0.5"), HasSubstr("state field 'loss_scale' is 0.5, expected a number from 1 to 3.4e38"));
    EXPECT_THAT(edited("loss_scale", "1e300"), HasSubstr("state field 'loss_scale' is 1e+300, expected"));
    EXPECT_THAT(edited("n_layer", "4294967298"), HasSubstr("config field 'n_layer' is 4294967298, outside the range of an int"));
    // Above INT64_MAX an integer parses unsigned; read as int64 it was -1 and passed the range check.
    EXPECT_THAT(edited("n_layer", "18446744073709551615"),
                HasSubstr("config field 'n_layer' is 18446744073709551615, outside the range of an int"));
}

TEST_F(CheckpointTest, WeightsOnlyCheckpointCannotResume) {
    GPT2 m(small_config(), *be, 2, 5);
    AdamW opt(m, AdamWConfig{});
    TrainState st;
    EXPECT_THAT(error_of([&] { load_checkpoint(path, m, &opt, &st); }), HasSubstr("weights only"));
}

TEST_F(CheckpointTest, BadMagicIsNamed) {
    std::string b = bytes;
    b[0] = 'X';
    EXPECT_THAT(load_error(b), HasSubstr("bad.ckpt: not a tune.cu checkpoint: it starts with \"XUNECKPT\""));
}

// A short file that does not start like a checkpoint is another kind of file, not a truncated checkpoint:
// the message says so and shows its first bytes; a short file that does start like one is truncated.
TEST_F(CheckpointTest, ShortFileOfAnotherKindIsNotCalledTruncated) {
    const std::string text = load_error("hello\n");
    EXPECT_THAT(text, HasSubstr("bad.ckpt: not a tune.cu checkpoint: it starts with \"hello\\n\""));
    EXPECT_THAT(text, HasSubstr("(6 bytes in all), where a checkpoint starts with \"TUNECKPT\""));
    EXPECT_THAT(text, ::testing::Not(HasSubstr("truncated")));
    EXPECT_THAT(load_error(std::string("\x7f" "ELF\x02\x01\x01\0\0", 9)),
                HasSubstr("starts with \"\\x7fELF\\x02\\x01\\x01\\x00\""));
    EXPECT_THAT(load_error(bytes.substr(0, 6)), HasSubstr("truncated: 6 bytes"));
    EXPECT_THAT(load_error(""), HasSubstr("bad.ckpt: empty file (0 bytes), not a tune.cu checkpoint"));
}

TEST(CheckpointCli, TextFileGivenAsCheckpointIsNamed) {
    TempDir tmp("ckptcli");
    spit(tmp.file("notes.txt"), "hello\n");
    write_shard(tmp.file("train.bin"), std::vector<int32_t>(100, 1), nullptr, 37);
    CmdResult r = run_cmd("bin/train --device cpu --out '' --train-data " + tmp.file("train.bin") + " --resume " +
                          tmp.file("notes.txt"));
    EXPECT_EQ(r.rc, 1) << r.out;
    EXPECT_THAT(r.out, HasSubstr(tmp.file("notes.txt") + ": not a tune.cu checkpoint: it starts with \"hello\\n\""));
}

TEST_F(CheckpointTest, WrongVersionIsNamed) {
    std::string b = bytes;
    store_u32(reinterpret_cast<uint8_t*>(&b[8]), 7);
    EXPECT_THAT(load_error(b), HasSubstr("checkpoint version 7"));
}

TEST_F(CheckpointTest, HeaderLengthPastTheEndIsTruncation) {
    std::string b = bytes;
    store_u32(reinterpret_cast<uint8_t*>(&b[12]), 0x7FFFFFFF);  // must not allocate 2 GB
    EXPECT_THAT(load_error(b), HasSubstr("header length 2147483647 runs past the end"));
}

TEST_F(CheckpointTest, GarbledHeaderIsNotJson) {
    std::string b = bytes;
    b[16] = '#';
    EXPECT_THAT(load_error(b), HasSubstr("not a JSON object"));
}

TEST_F(CheckpointTest, EachConfigFieldCorruptedIsNamed) {
    for (const char* field : {"n_layer", "n_head", "n_embd", "vocab_size", "block_size", "padded_vocab_size"}) {
        // Set the field to -5 inside the JSON header and fix up the header length.
        std::string b = without_checksum(bytes);  // edited by hand: the fields are still checked one by one
        const std::string key = std::string("\"") + field + "\":";
        size_t at = b.find(key);
        ASSERT_NE(at, std::string::npos) << field;
        size_t v = at + key.size(), end = b.find_first_of(",}", v);
        b.replace(v, end - v, "-5");
        store_u32(reinterpret_cast<uint8_t*>(&b[12]), (uint32_t)(header_len() + 2 - (end - v)));
        EXPECT_THAT(load_error(b), HasSubstr(std::string("'") + field + "' is -5")) << field;
    }
}

// A run on document windows says so in its checkpoints (bin/generate asks such a model after an <|endoftext|>);
// nothing recorded means fixed windows, and a value that is neither is named.
TEST_F(CheckpointTest, DocumentWindowsAreRecordedAndTheFieldChecked) {
    EXPECT_EQ(checkpoint_trained_on(path).windows, Windows::fixed);
    EXPECT_EQ(bytes.find("\"windows\""), std::string::npos) << "written for a fixed-window run";
    save_checkpoint(dir + "/d.ckpt", *model, nullptr, nullptr, nullptr, true, TrainedOn{Windows::documents});
    EXPECT_EQ(checkpoint_trained_on(dir + "/d.ckpt").windows, Windows::documents);
    save_merged(dir + "/m.ckpt", *model, TrainedOn{Windows::single});
    EXPECT_EQ(checkpoint_trained_on(dir + "/m.ckpt").windows, Windows::single);
    EXPECT_TRUE(checkpoint_trained_on(dir + "/m.ckpt").document_windows());
    save_merged(dir + "/i.ckpt", *model, TrainedOn{Windows::isolated});
    EXPECT_EQ(checkpoint_trained_on(dir + "/i.ckpt").windows, Windows::isolated);
    EXPECT_TRUE(checkpoint_trained_on(dir + "/i.ckpt").document_windows());
    save_merged(dir + "/m0.ckpt", *model);
    EXPECT_FALSE(checkpoint_trained_on(dir + "/m0.ckpt").document_windows());
    GPT2 other(small_config(), *be, 2, 5);
    load_checkpoint(dir + "/d.ckpt", other, nullptr, nullptr);  // the weights load as from any checkpoint
    EXPECT_EQ(get_tensor(other, other.params(), 0), get_tensor(*model, model->params(), 0));
    std::string b = without_checksum(slurp(dir + "/d.ckpt"));
    const size_t at = b.find("\"documents\"");
    ASSERT_NE(at, std::string::npos);
    b.replace(at, 11, "7          ");  // the same length: the header stays valid JSON
    spit(dir + "/bad.ckpt", b);
    EXPECT_THAT(error_of([&] { checkpoint_trained_on(dir + "/bad.ckpt"); }),
                HasSubstr(dir + "/bad.ckpt: header field 'windows' is 7, expected \"fixed\", \"documents\", "
                          "\"single\" or \"isolated\""));
}

// The longest training window: recorded where known, read back, 0 (unknown) where absent, a bad value named.
TEST_F(CheckpointTest, TrainedPositionsAreRecordedAndTheFieldChecked) {
    EXPECT_EQ(checkpoint_trained_on(path).positions, 0);
    EXPECT_EQ(bytes.find("trained_positions"), std::string::npos) << "written where unknown";
    save_merged(dir + "/p.ckpt", *model, TrainedOn{Windows::fixed, 37});
    EXPECT_EQ(checkpoint_trained_on(dir + "/p.ckpt").positions, 37);
    std::string b = without_checksum(slurp(dir + "/p.ckpt"));
    const size_t at = b.find("\"trained_positions\":37");
    ASSERT_NE(at, std::string::npos);
    b.replace(at + 20, 2, "-1");  // the same length: the header stays valid JSON
    spit(dir + "/bad.ckpt", b);
    EXPECT_THAT(error_of([&] { checkpoint_trained_on(dir + "/bad.ckpt"); }),
                HasSubstr(dir + "/bad.ckpt: header field 'trained_positions' is -1, expected a positive integer"));
}

TEST_F(CheckpointTest, ConfigMismatchNamesBothConfigs) {
    GPT2 bigger(small_config(37, 3), *be, 2, 5);
    std::string err = error_of([&] { load_checkpoint(path, bigger, nullptr, nullptr); });
    EXPECT_THAT(err, HasSubstr("does not match"));
    EXPECT_THAT(err, HasSubstr("L=2"));
    EXPECT_THAT(err, HasSubstr("L=3"));
}

TEST_F(CheckpointTest, TruncationAtSeveralOffsetsIsReported) {
    const size_t hend = 16 + header_len();
    for (size_t cut : {size_t(0), size_t(7), size_t(15), size_t(16) + 3, hend - 1, hend + 5, bytes.size() / 2,
                       bytes.size() - 1}) {
        std::string err = load_error(bytes.substr(0, cut));
        EXPECT_FALSE(err.empty()) << "cut at " << cut;
        EXPECT_TRUE(err.find("truncated") != std::string::npos || err.find("not a JSON object") != std::string::npos ||
                    (cut == 0 && err.find("empty file") != std::string::npos))
            << "cut at " << cut << ": " << err;
    }
}

// Any byte changed after writing, in the header or the data, is caught by the checksum, also where every
// field still reads as valid (a layer count of 1 instead of 2 would load another model).
TEST_F(CheckpointTest, AnyChangedByteFailsTheChecksum) {
    std::string b = bytes;
    const size_t at = b.find("\"n_layer\":2");
    ASSERT_NE(at, std::string::npos);
    b[at + 10] = '1';
    GPT2 one(small_config(37, 1), *be, 2, 5);
    spit(dir + "/bad.ckpt", b);
    EXPECT_THAT(error_of([&] { load_checkpoint(dir + "/bad.ckpt", one, nullptr, nullptr); }),
                HasSubstr("bad.ckpt: checksum mismatch"));
    for (size_t pos : {size_t(16) + header_len() + 5, bytes.size() / 2, bytes.size() - 1}) {
        std::string c = bytes;
        c[pos] ^= 0x10;
        EXPECT_THAT(load_error(c), HasSubstr("checksum mismatch")) << "byte " << pos;
    }
    EXPECT_EQ(load_error(without_checksum(bytes)), "") << "a file without a checksum (written before them) loads";
}

TEST_F(CheckpointTest, TrailingBytesAreRejected) {
    EXPECT_THAT(load_error(bytes + "extra"), HasSubstr("trailing bytes"));
}

TEST_F(CheckpointTest, MissingTensorIsNamed) {
    std::string b = without_checksum(bytes);
    size_t at = b.find("\"ln_f.bias\"");
    ASSERT_NE(at, std::string::npos);
    b[at + 1] = 'X';  // rename the tensor
    EXPECT_THAT(load_error(b), HasSubstr("tensor 'ln_f.bias' is missing"));
}

// A NaN or Inf weight (written by some other tool; tune.cu skips the steps that would make one) is refused where
// it is read, naming the tensor and the element, instead of surfacing as a NaN loss on every step.
TEST_F(CheckpointTest, NonFiniteWeightIsNamedWithItsElement) {
    const int i = model->params().table().find("h.1.mlp.c_proj.weight");  // (C, 4C) = (12, 48)
    ASSERT_GE(i, 0);
    std::vector<double> w = get_tensor(*model, model->params(), i);
    w[100] = INFINITY;
    set_tensor(*model, model->params(), i, w);
    save_checkpoint(dir + "/inf.ckpt", *model, nullptr, nullptr);
    GPT2 m(small_config(), *be, 2, 5);
    const std::string msg = error_of([&] { load_checkpoint(dir + "/inf.ckpt", m, nullptr, nullptr); });
    EXPECT_THAT(msg, HasSubstr(dir + "/inf.ckpt: tensor 'h.1.mlp.c_proj.weight' holds inf at element 100 (row 2, "
                               "column 4); a weight must be a finite number"));
}

TEST_F(CheckpointTest, FailedWriteLeavesThePreviousCheckpointLoadable) {
    // A checkpoint path inside a directory that does not exist: the write fails, nothing is replaced.
    EXPECT_FALSE(error_of([&] { save_checkpoint(dir + "/missing/x.ckpt", *model, nullptr, nullptr); }).empty());
    // A stale temporary file from a crashed writer does not disturb the real file.
    spit(path + ".tmp.12345", "half a checkpoint");
    GPT2 m(small_config(), *be, 2, 5);
    EXPECT_EQ(error_of([&] { load_checkpoint(path, m, nullptr, nullptr); }), "");
    EXPECT_EQ(slurp(path), bytes);
}

}  // namespace
}  // namespace tune::test
