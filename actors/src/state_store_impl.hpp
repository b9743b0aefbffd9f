#pragma once
// Kinds of state store that live in their own translation unit.
#include <memory>
#include <string_view>

#include "flexsp/actors/state_store.hpp"

namespace flexsp::actors {

/// redis://HOST:PORT[/NAMESPACE] (namespace default "flexsp").
expected<std::shared_ptr<state_store>> open_redis_state_store(std::string_view url);

}  // namespace flexsp::actors
