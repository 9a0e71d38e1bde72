// Exceptions thrown by the PostgreSQL-free core. The glue maps each kind to a SQLSTATE.
#pragma once

#include <stdexcept>
#include <string>

namespace bunce {

// A payload or argument that breaks Bunce's rules (SQLSTATE 22023).
class InvalidPayload : public std::runtime_error {
public:
    InvalidPayload(const std::string &message, std::string hint)
        : std::runtime_error(message), hint_(std::move(hint)) {}
    const std::string &hint() const { return hint_; }

private:
    std::string hint_;
};

// Input beyond a documented limit: size or nesting depth (SQLSTATE 54000).
class LimitExceeded : public std::runtime_error {
public:
    LimitExceeded(const std::string &message, std::string hint)
        : std::runtime_error(message), hint_(std::move(hint)) {}
    const std::string &hint() const { return hint_; }

private:
    std::string hint_;
};

// Text that is not JSON, or JSON that PostgreSQL cannot store (SQLSTATE 22P02).
class InvalidJson : public std::runtime_error {
public:
    explicit InvalidJson(const std::string &message,
                         std::string hint = "Pass the payload as a jsonb object.")
        : std::runtime_error(message), hint_(std::move(hint)) {}
    const std::string &hint() const { return hint_; }

private:
    std::string hint_;
};

// A trigger's column mapping that cannot be used (SQLSTATE 22023).
class InvalidMapping : public std::runtime_error {
public:
    InvalidMapping(const std::string &message, std::string hint)
        : std::runtime_error(message), hint_(std::move(hint)) {}
    const std::string &hint() const { return hint_; }

private:
    std::string hint_;
};

}  // namespace bunce
