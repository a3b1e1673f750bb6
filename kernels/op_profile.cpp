#include "kernels/op_profile.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <nlohmann/json.hpp>

namespace tune {

std::string fold_layer(const std::string& range) {
    static const std::string prefix = "layer ";
    if (range.compare(0, prefix.size(), prefix) != 0) return range;
    size_t end = prefix.size();
    while (end < range.size() && std::isdigit((unsigned char)range[end])) end++;
    if (end == prefix.size()) return range;  // "layer norm", not a layer number
    return "layers" + range.substr(end);
}

void OpProfile::push(const std::string& range) { ranges_.push_back(fold_layer(range)); }

void OpProfile::pop() {
    if (!ranges_.empty()) ranges_.pop_back();
}

std::string OpProfile::where() const {
    std::string w;
    for (const std::string& r : ranges_) w += (w.empty() ? "" : " / ") + r;
    return w;
}

void OpProfile::add(const std::string& where, const std::string& op, double ms) {
    for (OpTime& row : rows_)
        if (row.where == where && row.op == op) {
            row.calls++;
            row.ms += ms;
            return;
        }
    rows_.push_back(OpTime{where, op, 1, ms});
}

std::vector<OpTime> OpProfile::table() const {
    std::vector<OpTime> rows = rows_;
    std::stable_sort(rows.begin(), rows.end(), [](const OpTime& a, const OpTime& b) { return a.ms > b.ms; });
    return rows;
}

static std::string label(const OpTime& row) { return row.where.empty() ? row.op : row.where + " · " + row.op; }

std::string format_profile(const std::vector<OpTime>& rows, int step, double step_ms, const std::string& clock,
                           size_t max_rows) {
    double ops_ms = 0;
    for (const OpTime& r : rows) ops_ms += r.ms;
    auto share = [&](double ms) { return step_ms > 0 ? 100.0 * ms / step_ms : 0.0; };
    std::string out;
    char line[320];
    std::snprintf(line, sizeof line, "profile of step %d (%s): the step took %.3f ms, its ops %.3f ms (%.1f%%)\n",
                  step, clock.c_str(), step_ms, ops_ms, share(ops_ms));
    out += line;
    out += "        ms   share  calls  where · op\n";
    size_t shown = 0;
    for (; shown < rows.size() && shown < max_rows; shown++) {
        const OpTime& r = rows[shown];
        std::snprintf(line, sizeof line, "  %8.3f  %5.1f%%  %5d  %s\n", r.ms, share(r.ms), r.calls, label(r).c_str());
        out += line;
    }
    if (shown < rows.size()) {
        double rest = 0;
        int calls = 0;
        for (size_t i = shown; i < rows.size(); i++) rest += rows[i].ms, calls += rows[i].calls;
        std::snprintf(line, sizeof line, "  %8.3f  %5.1f%%  %5d  the other %zu rows\n", rest, share(rest), calls,
                      rows.size() - shown);
        out += line;
    }
    // Overlapping streams (data parallelism's communication) can make the ops' sum exceed the step.
    const double gap = step_ms - ops_ms;
    std::snprintf(line, sizeof line, "  %8.3f  %5.1f%%      -  %s\n", gap, share(gap),
                  gap >= 0 ? "in no op: launch gaps, host work, copies and memsets, communication"
                           : "ops on overlapping streams: their sum exceeds the step");
    out += line;
    return out;
}

std::string profile_json(const std::vector<OpTime>& rows, int step, double step_ms, const std::string& clock) {
    nlohmann::json ops = nlohmann::json::array();
    for (const OpTime& r : rows) ops.push_back({{"where", r.where}, {"op", r.op}, {"calls", r.calls}, {"ms", r.ms}});
    const nlohmann::json j = {{"step", step}, {"step_ms", step_ms}, {"clock", clock}, {"ops", ops}};
    return j.dump(1) + "\n";
}

}  // namespace tune
