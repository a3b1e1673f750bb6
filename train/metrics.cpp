#include "train/metrics.h"


#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "data/fileio.h"
#include "kernels/common.h"

namespace tune {

namespace {

// The "step" of a line read back, as a double (a step beyond any integer type, or a fraction, compares as itself),
// and whether it is one a plot can take: an int. Converting the JSON number straight to an integer type would be
// undefined behaviour for 1e30 (found by fuzzing).
struct LineStep {
    double value;
    bool plottable;
};
std::optional<LineStep> step_of(const nlohmann::json& j) {
    const auto it = j.find("step");
    if (it == j.end() || !it->is_number()) return std::nullopt;
    const double v = it->get<double>();
    return LineStep{v, it->is_number_integer() && v >= 0 && v <= INT_MAX};
}

}  // namespace

RunLog::RunLog(const std::string& dir, long long resume_step, const std::string& file) : dir_(dir) {
    if (dir.empty()) return;
    make_dirs(dir);
    const std::string path = dir + "/" + file;
    if (std::error_code ec; resume_step >= 0 && std::filesystem::exists(path, ec)) {
        const std::vector<uint8_t> bytes = read_file_bytes(path);
        read_back_ = true;
        std::istringstream in(std::string(bytes.begin(), bytes.end()));
        std::string kept;
        for (std::string line; std::getline(in, line);) {
            const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
            if (j.is_discarded() || !j.is_object()) {
                if (in.peek() == EOF) break;  // the last line, torn by a crash in mid-write
                kept += line + "\n";          // something else's line: not ours to drop
                continue;
            }
            const std::optional<LineStep> step = step_of(j);
            if (step && step->value > (double)resume_step) continue;
            kept += line + "\n";
            if (!step || !step->plottable) continue;
            if (j.contains("loss")) {  // null: a skipped or empty step, logged all the same
                last_train_step_ = std::max(last_train_step_, (long long)step->value);
                if (j["loss"].is_number()) train_point((int)step->value, j["loss"].get<double>());
            }
            if (j.contains("val_loss") && j["val_loss"].is_number())
                val_point((int)step->value, j["val_loss"].get<double>());
        }
        write_file_atomic(path, kept.data(), kept.size());
    }
    // A new run's log starts empty, and so does its plot: an earlier run's loss.svg would otherwise pass for
    // this run's until the first validation (or for good, after a kill).
    if (resume_step < 0 && file == "metrics.jsonl") {
        std::error_code ec;
        std::filesystem::remove(dir + "/loss.svg", ec);
    }
    f_ = std::fopen(path.c_str(), resume_step >= 0 ? "a" : "w");
    if (!f_)
        throw Error(path + ": cannot open for " + (resume_step >= 0 ? "appending" : "writing") + " (" +
                    std::strerror(errno) + ")");
    path_ = path;
}

RunLog::~RunLog() {
    if (f_) std::fclose(f_);
}

void RunLog::append(const std::string& line) {
    if (!f_) return;
    if (std::fputs(line.c_str(), f_) < 0 || std::fputc('\n', f_) == EOF || std::fflush(f_) != 0)
        throw Error(path_ + ": write failed (" + std::strerror(errno) + ")");
}

void RunLog::sync() {
    if (!f_) return;
    if (std::fflush(f_) != 0 || ::fsync(fileno(f_)) != 0)
        throw Error(path_ + ": write failed (" + std::strerror(errno) + ")");
}

bool RunLog::has_val(int step) const {
    for (const auto& p : val_.points)
        if (p.first == (double)step) return true;
    return false;
}

double as_logged_loss(double v) {
    if (!std::isfinite(v)) return v;
    char b[64];
    std::snprintf(b, sizeof b, "%.*f", kLossDecimals, v);
    return std::strtod(b, nullptr);
}

void RunLog::train_point(int step, double loss) { train_.points.push_back({(double)step, as_logged_loss(loss)}); }
void RunLog::val_point(int step, double loss) { val_.points.push_back({(double)step, as_logged_loss(loss)}); }

void RunLog::write_plot() const {
    if (dir_.empty()) return;
    write_line_chart_svg(dir_ + "/loss.svg", title_, "step", "loss", {train_, val_});
}

// Tick values 1, 2, 5 x 10^k covering [lo, hi] with about `want` ticks.
static std::vector<double> nice_ticks(double lo, double hi, int want) {
    double span = hi - lo;
    if (!(span > 0)) return {lo};
    double raw = span / want, mag = std::pow(10.0, std::floor(std::log10(raw)));
    double step = mag;
    for (double m : {1.0, 2.0, 5.0, 10.0})
        if (raw <= m * mag) {
            step = m * mag;
            break;
        }
    std::vector<double> t;
    for (double v = std::ceil(lo / step) * step; v <= hi + 1e-9 * span; v += step) t.push_back(v);
    return t;
}

static std::string fmt(double v) {
    if (v == 0) v = 0;  // -0 (from rounding a tick) prints as 0
    char b[32];
    std::snprintf(b, sizeof b, "%g", v);
    return b;
}

void write_line_chart_svg(const std::string& path, const std::string& title, const std::string& xlabel,
                          const std::string& ylabel, const std::vector<Curve>& curves, bool log_x) {
    const double W = 720, H = 440, left = 70, right = 20, top = 40, bottom = 55;
    auto tx = [&](double x) { return log_x ? std::log10(x) : x; };
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
    for (const Curve& c : curves)
        for (auto [x, y] : c.points) {
            if (!std::isfinite(x) || !std::isfinite(y) || (log_x && x <= 0)) continue;
            x0 = std::min(x0, tx(x));
            x1 = std::max(x1, tx(x));
            y0 = std::min(y0, y);
            y1 = std::max(y1, y);
        }
    if (!std::isfinite(x0)) x0 = 0, x1 = 1, y0 = 0, y1 = 1;
    if (x1 == x0) x1 = x0 + 1;
    if (y1 == y0) y1 = y0 + 1;
    const double pad = 0.05 * (y1 - y0);
    y0 -= pad;
    y1 += pad;
    auto px = [&](double x) { return left + (tx(x) - x0) / (x1 - x0) * (W - left - right); };
    auto py = [&](double y) { return top + (y1 - y) / (y1 - y0) * (H - top - bottom); };

    std::ostringstream s;
    s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H
      << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
    s << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
    s << "<text x=\"" << W / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">" << title << "</text>\n";
    for (double v : nice_ticks(y0, y1, 6)) {
        s << "<line x1=\"" << left << "\" x2=\"" << W - right << "\" y1=\"" << py(v) << "\" y2=\"" << py(v)
          << "\" stroke=\"#e5e5e5\"/>\n";
        s << "<text x=\"" << left - 6 << "\" y=\"" << py(v) + 4 << "\" text-anchor=\"end\">" << fmt(v) << "</text>\n";
    }
    for (double v : nice_ticks(x0, x1, 8)) {
        double xv = log_x ? std::pow(10.0, v) : v;
        double X = left + (v - x0) / (x1 - x0) * (W - left - right);
        s << "<line x1=\"" << X << "\" x2=\"" << X << "\" y1=\"" << top << "\" y2=\"" << H - bottom
          << "\" stroke=\"#e5e5e5\"/>\n";
        s << "<text x=\"" << X << "\" y=\"" << H - bottom + 16 << "\" text-anchor=\"middle\">" << fmt(xv)
          << "</text>\n";
    }
    s << "<rect x=\"" << left << "\" y=\"" << top << "\" width=\"" << W - left - right << "\" height=\""
      << H - top - bottom << "\" fill=\"none\" stroke=\"#333\"/>\n";
    s << "<text x=\"" << (left + W - right) / 2 << "\" y=\"" << H - 12 << "\" text-anchor=\"middle\">" << xlabel
      << (log_x ? " (log scale)" : "") << "</text>\n";
    s << "<text transform=\"translate(16," << (top + H - bottom) / 2 << ") rotate(-90)\" text-anchor=\"middle\">"
      << ylabel << "</text>\n";
    int legend = 0;
    for (const Curve& c : curves) {
        if (c.points.empty()) continue;
        s << "<polyline fill=\"none\" stroke=\"" << c.color << "\" stroke-width=\"1.6\" points=\"";
        for (auto [x, y] : c.points)
            if (std::isfinite(x) && std::isfinite(y) && (!log_x || x > 0)) s << px(x) << "," << py(y) << " ";
        s << "\"/>\n";
        // A lone drawable point makes no line: a dot (and none for a point that is not a number).
        std::vector<std::pair<double, double>> drawable;
        for (auto [x, y] : c.points)
            if (std::isfinite(x) && std::isfinite(y) && (!log_x || x > 0)) drawable.push_back({x, y});
        if (drawable.size() == 1)
            s << "<circle cx=\"" << px(drawable[0].first) << "\" cy=\"" << py(drawable[0].second)
              << "\" r=\"3\" fill=\"" << c.color << "\"/>\n";
        double ly = top + 16 + 18 * legend++;
        s << "<line x1=\"" << W - right - 120 << "\" x2=\"" << W - right - 96 << "\" y1=\"" << ly << "\" y2=\"" << ly
          << "\" stroke=\"" << c.color << "\" stroke-width=\"2\"/>\n";
        s << "<text x=\"" << W - right - 90 << "\" y=\"" << ly + 4 << "\">" << c.label << "</text>\n";
    }
    s << "</svg>\n";
    const std::string out = s.str();
    write_file_atomic(path, out.data(), out.size());
}

static double seconds_now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

ProgressLine::ProgressLine(const char* what, size_t total, double quiet_s, double every_s)
    : what_(what), total_(total), quiet_s_(quiet_s), every_s_(every_s), t0_(seconds_now()), tty_(isatty(2)) {}

ProgressLine::~ProgressLine() {
    if (open_) std::fputc('\n', stderr);
}

void ProgressLine::update(size_t done) {
    if (!what_ || total_ == 0) return;
    const double t = seconds_now(), elapsed = t - t0_;
    const bool last = done >= total_;
    if (elapsed < quiet_s_ || (!last && t - last_ < every_s_)) {
        if (last && open_) std::fputc('\n', stderr), open_ = false;
        return;
    }
    last_ = t;
    const double eta = done ? elapsed / (double)done * (double)(total_ - std::min(done, total_)) : NAN;
    // On a terminal the line rewrites itself: \033[K clears what a longer earlier text left after it.
    std::fprintf(stderr, "%s%s %zu/%zu (%.0f%%), %s %s%s%s", tty_ ? "\r" : "", what_, done, total_,
                 100.0 * (double)done / (double)total_, last ? "took" : "ETA",
                 format_duration(last ? elapsed : eta).c_str(), tty_ ? "\033[K" : "", tty_ && !last ? "" : "\n");
    std::fflush(stderr);
    open_ = tty_ && !last;
}

std::string format_duration(double sec) {
    if (!std::isfinite(sec) || sec < 0) return "?";
    long s = std::lround(sec);
    char b[32];
    if (s >= 3600)
        std::snprintf(b, sizeof b, "%ldh%02ldm", s / 3600, (s / 60) % 60);
    else if (s >= 60)
        std::snprintf(b, sizeof b, "%ldm%02lds", s / 60, s % 60);
    else
        std::snprintf(b, sizeof b, "%lds", s);
    return b;
}

}  // namespace tune
