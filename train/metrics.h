// What a run leaves in its run directory: metrics.jsonl (one JSON object per line, appended and flushed
// as the run goes, so nothing is lost on a crash) and loss.svg (train and validation loss against step,
// redrawn at every validation and at the end; it opens in any browser).
#pragma once

#include <cstdio>
#include <string>
#include <utility>
#include <vector>

namespace tune {

struct Curve {
    std::string label;
    std::string color;  // CSS color
    std::vector<std::pair<double, double>> points;  // (x, y)
};

// Writes a line chart as a standalone SVG file (atomically). Non-finite points are left out.
void write_line_chart_svg(const std::string& path, const std::string& title, const std::string& xlabel,
                          const std::string& ylabel, const std::vector<Curve>& curves, bool log_x = false);

// Decimals of a loss in metrics.jsonl ("%.6f"): the trainer writes them, the plot draws them.
constexpr int kLossDecimals = 6;
// v as metrics.jsonl holds it: rounded to kLossDecimals (non-finite values unchanged).
double as_logged_loss(double v);

class RunLog {
   public:
    // Opens (creating the directory) dir/metrics.jsonl afresh, or for a run resumed after `resume_step`
    // steps (resume_step >= 0) continues it: the lines of later steps (written before a crash or an
    // interruption, after the checkpoint) are dropped, as is a torn last line (any other line that is not
    // JSON is kept as it is), and the curves of loss.svg
    // start from the kept lines, so the plot shows the whole run. An empty dir logs nothing.
    RunLog(const std::string& dir, long long resume_step = -1, const std::string& file = "metrics.jsonl");
    ~RunLog();

    // Appends one JSON object (already serialised) as a line and flushes it; a failed write (a full disk) throws,
    // naming the file, instead of leaving a log with steps missing.
    void append(const std::string& json_line);
    // Puts the lines appended so far on the disk (fsync): done before a checkpoint is written, so a machine that
    // goes down cannot leave a checkpoint of a later step than its log's last line.
    void sync();
    // For a resumed log: the last step with a training line among those kept (its loss null for a skipped or
    // empty step; -1: none), and whether the
    // file was there to read. A log that ends before the checkpoint's step lost lines (written by another
    // program, or kept from a machine's crash by an older build).
    long long last_train_step() const { return last_train_step_; }
    bool read_back() const { return read_back_; }
    // A point of the plot, rounded as metrics.jsonl writes a loss (kLossDecimals), so a resumed run, whose
    // earlier points come back from the log, draws the same loss.svg as one that ran without a stop.
    void train_point(int step, double loss);
    void val_point(int step, double loss);
    void write_plot() const;  // dir/loss.svg
    // The plot's title ("loss"): where the training curve is not the loss the validation measures, it says so.
    void set_title(const std::string& title) { title_ = title; }
    const std::string& dir() const { return dir_; }
    bool has_val(int step) const;  // a validation loss of this step is in the log (kept from before a resume)

   private:
    std::string dir_, path_, title_ = "loss";
    FILE* f_ = nullptr;
    long long last_train_step_ = -1;
    bool read_back_ = false;
    Curve train_{"train", "#1f77b4", {}}, val_{"validation", "#d62728", {}};
};

// "1h02m", "3m05s", "12s"
std::string format_duration(double seconds);

// A progress line on stderr for work of `total` units that may take long: silent for the first few seconds
// (quick jobs print nothing), then "what 1200/8530 (14%), ETA 3m05s" every few seconds, rewritten in place on
// a terminal; the last update ends the line. A null `what` prints nothing.
class ProgressLine {
   public:
    // quiet_s: seconds before the first line; every_s: seconds between lines.
    ProgressLine(const char* what, size_t total, double quiet_s = 5, double every_s = 5);
    ~ProgressLine();  // ends a line left open (stopped by an error), so a message gets its own
    void update(size_t done);

   private:
    const char* what_;
    size_t total_;
    double quiet_s_, every_s_, t0_, last_ = 0;
    bool tty_, open_ = false;
};

}  // namespace tune
