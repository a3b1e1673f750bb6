// JSON read from outside the program: a bound on its nesting, and the parser's reason for refusing it.
//
// nlohmann::json parses and destroys nested values without recursion, but dump() recurses once a level, and
// every error message that shows a value calls it: a file of 200,000 '[' would overflow the stack in the
// message that refuses it. No file this program reads nests more than a few levels (a safetensors header
// three, a checkpoint header four), so every reader refuses deeper nesting before it parses (the safetensors
// reader counts it in its parser callback, which also refuses duplicate keys).
#pragma once

#include <exception>
#include <string>
#include <string_view>

namespace tune {

constexpr int kMaxJsonDepth = 64;

// The deepest nesting of arrays and objects in `text`, counted outside strings; stops at limit + 1.
int json_depth(std::string_view text, int limit = kMaxJsonDepth);

// Throws tune::Error "WHERE: JSON nested deeper than 64 levels" when `text` is.
void check_json_depth(std::string_view text, const std::string& where);

// A nlohmann::json exception's reason without its "[json.exception.parse_error.101] " prefix: where and what
// ("parse error at line 1, column 5: syntax error ... invalid literal", "number overflow parsing '1e999'").
std::string json_reason(const std::exception& e);

}  // namespace tune
