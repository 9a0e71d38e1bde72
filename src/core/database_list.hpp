// bunce.database: the databases whose outboxes are delivered, as a comma-separated list.
#pragma once

#include <string>
#include <vector>

namespace bunce {

// Names are taken as written (a database name is case-sensitive) without the spaces around
// them; a name in double quotes may hold commas and spaces, and "" stands for a quote inside.
// Returns false, with the reason in `problem`, for an empty name, an unterminated quote, a
// name listed twice, a name longer than max_name_bytes or more than max_names names.
bool parse_database_list(const std::string &text, size_t max_names, size_t max_name_bytes,
                         std::vector<std::string> &names, std::string &problem);

}  // namespace bunce
