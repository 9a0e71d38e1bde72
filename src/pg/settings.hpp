// The bunce.* settings (guc.cpp) and the API key.
#pragma once

extern "C" {
#include "postgres.h"
}

namespace bunce_pg {

extern char *database;
extern char *api_url;
extern int rate_limit;
extern int max_in_flight;
extern int request_timeout_ms;
extern int catalog_refresh_s;  // bunce.catalog_refresh
extern int max_attempts;
extern bool enabled;
extern char *ca_file;
extern int delivery_log_retention_s;
enum OnInvalid { ON_INVALID_ERROR, ON_INVALID_DEAD_LETTER };
extern int on_invalid;
enum Ordering { ORDERING_CUSTOMER, ORDERING_NONE };
extern int ordering;
extern char *api_key_file;
extern char *https_proxy;
extern int max_payload_size;  // bytes of payload JSON text

void define_gucs();

// bunce.database, parsed (see database_list.hpp). False with the reason when it does not parse.
constexpr int kMaxDatabases = 64;
struct DatabaseList {
    int count;
    char names[kMaxDatabases][NAMEDATALEN];
};
bool parse_databases(const char *text, DatabaseList *out, char *problem, size_t size);

// The key in use: from bunce.api_key_file when that is set (after load_api_key), else
// bunce.api_key (the GUC itself only ever holds a mask, see guc.cpp).
const char *api_key();
// (Re-)reads bunce.api_key_file; false with the reason when it cannot be used.
bool load_api_key(char *problem, size_t size);

}  // namespace bunce_pg
