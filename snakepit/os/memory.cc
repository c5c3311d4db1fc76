#include "snakepit/os/memory.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>

namespace snakepit::os {

void AdviseHugePages(void* data, size_t size) {
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t start = reinterpret_cast<uintptr_t>(data);
  const uintptr_t first = (start + page - 1) & ~(page - 1);
  const uintptr_t end = (start + size) & ~(page - 1);
  if (end <= first) {
    return;
  }
  // EINVAL on kernels without THP: the buffer simply keeps small pages.
  (void)::madvise(reinterpret_cast<void*>(first), end - first,
                  MADV_HUGEPAGE);
}

}  // namespace snakepit::os
