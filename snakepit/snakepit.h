// The whole public C++ API of Snakepit.

#ifndef SNAKEPIT_SNAKEPIT_H_
#define SNAKEPIT_SNAKEPIT_H_

#include "snakepit/base/status.h"
#include "snakepit/base/value.h"
#include "snakepit/pool/call.h"
#include "snakepit/pool/pool.h"

#endif  // SNAKEPIT_SNAKEPIT_H_
