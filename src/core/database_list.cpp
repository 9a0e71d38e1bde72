#include "database_list.hpp"

#include <algorithm>

namespace bunce {

namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

}  // namespace

bool parse_database_list(const std::string &text, size_t max_names, size_t max_name_bytes,
                         std::vector<std::string> &names, std::string &problem) {
    names.clear();
    size_t i = 0;
    const size_t n = text.size();
    if (std::all_of(text.begin(), text.end(), is_space)) {
        problem = "no database is named";
        return false;
    }
    while (true) {
        while (i < n && is_space(text[i])) i++;
        std::string name;
        if (i < n && text[i] == '"') {
            for (i++;; i++) {
                if (i == n) {
                    problem = "a quoted name has no closing quote";
                    return false;
                }
                if (text[i] == '"') {
                    if (i + 1 < n && text[i + 1] == '"') {
                        name += '"';
                        i++;
                        continue;
                    }
                    i++;
                    break;
                }
                name += text[i];
            }
            while (i < n && is_space(text[i])) i++;
            if (i < n && text[i] != ',') {
                problem = "a quoted name must be followed by a comma or the end of the list";
                return false;
            }
        } else {
            const size_t start = i;
            while (i < n && text[i] != ',' && text[i] != '"') i++;
            if (i < n && text[i] == '"') {
                problem = "a double quote may only begin a name";
                return false;
            }
            size_t end = i;
            while (end > start && is_space(text[end - 1])) end--;
            name = text.substr(start, end - start);
        }
        if (name.empty()) {
            problem = "the list has an empty name";
            return false;
        }
        if (name.size() > max_name_bytes) {
            size_t cut = max_name_bytes;  // at a character's start (UTF-8 and the like)
            while (cut > 0 && (static_cast<unsigned char>(name[cut]) & 0xC0) == 0x80) cut--;
            problem = "the name \"" + name.substr(0, cut) + "...\" is longer than a database name can be";
            return false;
        }
        if (std::find(names.begin(), names.end(), name) != names.end()) {
            problem = "database \"" + name + "\" is listed twice";
            return false;
        }
        names.push_back(name);
        if (names.size() > max_names) {
            problem = "more than " + std::to_string(max_names) + " databases are listed";
            return false;
        }
        if (i >= n) return true;
        i++;  // the comma
    }
}

}  // namespace bunce
