// Serves a pool's ctx.session requests from a SessionStore, and tells
// pools when sessions end.

#ifndef SNAKEPIT_SESSION_POOL_BACKEND_H_
#define SNAKEPIT_SESSION_POOL_BACKEND_H_

#include <memory>

#include "snakepit/pool/session_backend.h"
#include "snakepit/session/store.h"

namespace snakepit {

// A SessionBackend over `store`; shares ownership of it.
std::shared_ptr<SessionBackend> MakePoolBackend(
    std::shared_ptr<SessionStore> store);

}  // namespace snakepit

#endif  // SNAKEPIT_SESSION_POOL_BACKEND_H_
