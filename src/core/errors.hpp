// Exceptions thrown by the PostgreSQL-free core. The glue maps each kind to a SQLSTATE; each
// carries a hint for the user besides its message.
#pragma once

#include <stdexcept>
#include <string>

namespace bunce {

class ErrorWithHint : public std::runtime_error {
public:
    ErrorWithHint(const std::string &message, std::string hint) : std::runtime_error(message), hint_(std::move(hint)) {}
    const std::string &hint() const { return hint_; }

private:
    std::string hint_;
};

// A payload or argument that breaks Bunce's rules (SQLSTATE 22023).
class InvalidPayload : public ErrorWithHint {
public:
    using ErrorWithHint::ErrorWithHint;
};

// Input beyond a documented limit: size or nesting depth (SQLSTATE 54000).
class LimitExceeded : public ErrorWithHint {
public:
    using ErrorWithHint::ErrorWithHint;
};

// Text that is not JSON, or JSON that PostgreSQL cannot store (SQLSTATE 22P02).
class InvalidJson : public ErrorWithHint {
public:
    explicit InvalidJson(const std::string &message, std::string hint = "Pass the payload as a jsonb object.")
        : ErrorWithHint(message, std::move(hint)) {}
};

// A trigger's column mapping that cannot be used (SQLSTATE 22023).
class InvalidMapping : public ErrorWithHint {
public:
    using ErrorWithHint::ErrorWithHint;
};

}  // namespace bunce
