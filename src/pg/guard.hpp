// The C++/PostgreSQL boundary. C++ work runs inside guarded(), which catches every exception
// and records it in a plain struct; the caller raises the PostgreSQL ERROR afterwards, from a
// frame with no C++ object alive, so a longjmp never crosses a destructor or a handler.
#pragma once

#include <cstring>
#include <new>

#include "errors.hpp"

extern "C" {
#include "postgres.h"
#include "utils/elog.h"
}

namespace bunce_pg {

// Trivially destructible: safe to keep in a frame that ereports.
struct CoreError {
    bool failed = false;
    int sqlstate = 0;
    char message[512];
    char hint[512];
};

template <typename Fn>
bool guarded(CoreError &err, Fn &&fn) noexcept {
    auto set = [&err](int code, const char *message, const char *hint) {
        err.failed = true;
        err.sqlstate = code;
        strlcpy(err.message, message, sizeof err.message);
        strlcpy(err.hint, hint ? hint : "", sizeof err.hint);
    };
    try {
        fn();
        return true;
    } catch (const bunce::InvalidPayload &e) {
        set(ERRCODE_INVALID_PARAMETER_VALUE, e.what(), e.hint().c_str());
    } catch (const bunce::InvalidMapping &e) {
        set(ERRCODE_INVALID_PARAMETER_VALUE, e.what(), e.hint().c_str());
    } catch (const bunce::LimitExceeded &e) {
        set(ERRCODE_PROGRAM_LIMIT_EXCEEDED, e.what(), e.hint().c_str());
    } catch (const bunce::InvalidJson &e) {
        set(ERRCODE_INVALID_TEXT_REPRESENTATION, e.what(), e.hint().c_str());
    } catch (const std::bad_alloc &) {
        set(ERRCODE_OUT_OF_MEMORY, "out of memory", nullptr);
    } catch (const std::exception &e) {
        set(ERRCODE_INTERNAL_ERROR, e.what(), nullptr);
    } catch (...) {
        set(ERRCODE_INTERNAL_ERROR, "unexpected C++ exception", nullptr);
    }
    return false;
}

// Raises the ERROR a failed guarded() recorded. Call only after guarded() has returned.
[[noreturn]] inline void raise(const CoreError &err, const char *context = nullptr) {
    ereport(ERROR, (errcode(err.sqlstate), context ? errmsg("%s: %s", context, err.message) : errmsg("%s", err.message),
                    err.hint[0] ? errhint("%s", err.hint) : 0));
    pg_unreachable();
}

// palloc that never ERRORs (it returns NULL instead), for use inside guarded code.
inline char *pstrdup_nothrow(const char *s, size_t len) {
    auto *p = static_cast<char *>(palloc_extended(len + 1, MCXT_ALLOC_NO_OOM));
    if (!p) throw std::bad_alloc();
    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

}  // namespace bunce_pg
