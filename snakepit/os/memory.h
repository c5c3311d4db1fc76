// Advice to the kernel about large buffers.

#ifndef SNAKEPIT_OS_MEMORY_H_
#define SNAKEPIT_OS_MEMORY_H_

#include <cstddef>

namespace snakepit::os {

// Asks the kernel to back the whole pages inside [data, data + size) with
// transparent huge pages, where the system allows it (THP "madvise" or
// "always"). Only advice: it never fails, and without THP nothing
// changes. Call it before the pages are first touched; it pays off for
// buffers of several MiB that are written at once, where the 4 KiB page
// faults of fresh memory cost more than copying into it.
void AdviseHugePages(void* data, size_t size);

}  // namespace snakepit::os

#endif  // SNAKEPIT_OS_MEMORY_H_
