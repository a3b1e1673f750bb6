#include "data/json_depth.h"

#include "kernels/common.h"

namespace tune {

std::string json_reason(const std::exception& e) {
    const std::string w = e.what();
    const size_t at = w.find("] ");
    return at == std::string::npos ? w : w.substr(at + 2);
}

int json_depth(std::string_view text, int limit) {
    int depth = 0, deepest = 0;
    bool in_string = false;
    for (size_t i = 0; i < text.size(); i++) {
        const char c = text[i];
        if (in_string) {
            if (c == '\\') i++;  // an escaped character: \" does not end the string
            else if (c == '"') in_string = false;
        } else if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            if (++depth > deepest && (deepest = depth) > limit) return deepest;
        } else if (c == ']' || c == '}') {
            depth--;  // unbalanced text is the parser's to refuse
        }
    }
    return deepest;
}

void check_json_depth(std::string_view text, const std::string& where) {
    if (json_depth(text) > kMaxJsonDepth)
        throw Error(where + ": JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
}

}  // namespace tune
