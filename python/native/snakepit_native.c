/* _snakepit_native: the worker's small-call loop in C.
 *
 * snakepit._worker serves calls of plain functions (no Context, not async,
 * not a generator) in a loop that reads one CALL frame per receive,
 * decodes its msgpack arguments, calls the function, encodes the result
 * and sends the RESULT frame (docs/protocol.md). In Python that loop
 * costs ~1.2 us a call beside the two system calls; here ~0.3 us
 * (docs/benchmarks.md, "One small call in flight").
 *
 * Contract: this module does only the common case and hands everything
 * else back. It never reports an error of a call itself, except through
 * the worker's own Python callbacks: a frame it cannot take (any other
 * type, a split or merged frame, a header it does not know, arguments
 * its msgpack subset does not read, a CANCEL waiting for the call) is left
 * in the buffer, and serve_plain_calls() returns its length so that the
 * worker's general path reads it from scratch. A result it cannot encode
 * goes to the worker's general sender. So the Python worker stays the
 * reference: everything here must give what it gives, or step aside.
 *
 * msgpack is written by hand below because the `msgpack` package's
 * unpackb() and Packer.pack() cost more to call than the whole loop (their
 * per-call option parsing alone is ~0.15 us) and have no C API.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
#include <endian.h>

enum {
  kPrefixLen = 20,
  kCall = 10,
  kResult = 11,
  /* Longer headers are a protocol error, which the general path reports
   * (MAX_HEADER_LEN in snakepit/_protocol.py). */
  kMaxHeaderLen = 1 << 20,
  /* Bytes results from this size on go to the general path, which sends
   * them without a copy. Matches _BIG_RESULT in _worker.py. */
  kBigResult = 64 * 1024,
};

/* Bins from this size up are decoded onto huge pages (new_bytes). */
static const uint64_t kHugeBin = 4u << 20;

/* A growable output buffer, kept between calls. */
typedef struct {
  char* data;
  size_t len;
  size_t cap;
} Out;

static int out_reserve(Out* out, size_t more) {
  if (out->cap - out->len >= more) {
    return 0;
  }
  size_t cap = out->cap ? out->cap : 256;
  while (cap - out->len < more) {
    if (cap > SIZE_MAX / 2) {
      return -1;
    }
    cap *= 2;
  }
  char* data = PyMem_Realloc(out->data, cap);
  if (data == NULL) {
    return -1;
  }
  out->data = data;
  out->cap = cap;
  return 0;
}

static int out_put(Out* out, const void* bytes, size_t n) {
  if (out_reserve(out, n) < 0) {
    return -1;
  }
  memcpy(out->data + out->len, bytes, n);
  out->len += n;
  return 0;
}

/* A type byte followed by `width` bytes of `value`, big-endian. */
static int out_be(Out* out, unsigned char type, uint64_t value, int width) {
  unsigned char bytes[9];
  bytes[0] = type;
  for (int i = 0; i < width; ++i) {
    bytes[width - i] = (unsigned char)(value >> (8 * i));
  }
  return out_put(out, bytes, (size_t)width + 1);
}

/* A length header: the fix form when there is one (fix != 0) and `len`
 * <= fix_max, else 8, 16 or 32 bits (code8 0: the family has no 8-bit
 * form). */
static int out_len(Out* out, size_t len, unsigned char fix, size_t fix_max,
                   unsigned char code8, unsigned char code16,
                   unsigned char code32) {
  if (fix != 0 && len <= fix_max) {
    unsigned char b = (unsigned char)(fix | len);
    return out_put(out, &b, 1);
  }
  if (code8 && len <= 0xff) {
    return out_be(out, code8, len, 1);
  }
  if (len <= 0xffff) {
    return out_be(out, code16, len, 2);
  }
  if (len <= 0xffffffffu) {
    return out_be(out, code32, len, 4);
  }
  return -1;
}

static int encode_int(Out* out, PyObject* obj) {
  int overflow = 0;
  long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
  if (overflow > 0) {
    unsigned long long u = PyLong_AsUnsignedLongLong(obj);
    if (u == (unsigned long long)-1 && PyErr_Occurred()) {
      PyErr_Clear();
      return -1;
    }
    return out_be(out, 0xcf, u, 8);
  }
  if (overflow < 0 || (v == -1 && PyErr_Occurred())) {
    PyErr_Clear();
    return -1;
  }
  if (v >= 0) {
    if (v < 128) {
      unsigned char b = (unsigned char)v;
      return out_put(out, &b, 1);
    }
    if (v <= 0xff) return out_be(out, 0xcc, (uint64_t)v, 1);
    if (v <= 0xffff) return out_be(out, 0xcd, (uint64_t)v, 2);
    if (v <= 0xffffffffLL) return out_be(out, 0xce, (uint64_t)v, 4);
    return out_be(out, 0xcf, (uint64_t)v, 8);
  }
  if (v >= -32) {
    unsigned char b = (unsigned char)(int8_t)v;
    return out_put(out, &b, 1);
  }
  if (v >= INT8_MIN) return out_be(out, 0xd0, (uint64_t)v, 1);
  if (v >= INT16_MIN) return out_be(out, 0xd1, (uint64_t)v, 2);
  if (v >= INT32_MIN) return out_be(out, 0xd2, (uint64_t)v, 4);
  return out_be(out, 0xd3, (uint64_t)v, 8);
}

static int encode_value(Out* out, PyObject* obj, int depth, int max_depth);

static int encode_items(Out* out, PyObject** items, Py_ssize_t n, int depth,
                        int max_depth) {
  if (depth > max_depth ||
      out_len(out, (size_t)n, 0x90, 15, 0, 0xdc, 0xdd) < 0) {
    return -1;
  }
  for (Py_ssize_t i = 0; i < n; ++i) {
    if (encode_value(out, items[i], depth + 1, max_depth) < 0) {
      return -1;
    }
  }
  return 0;
}

static int encode_map(Out* out, PyObject* dict, int depth, int max_depth) {
  if (depth > max_depth ||
      out_len(out, (size_t)PyDict_GET_SIZE(dict), 0x80, 15, 0, 0xde,
              0xdf) < 0) {
    return -1;
  }
  Py_ssize_t pos = 0;
  PyObject* key;
  PyObject* value;
  while (PyDict_Next(dict, &pos, &key, &value)) {
    if (encode_value(out, key, depth + 1, max_depth) < 0 ||
        encode_value(out, value, depth + 1, max_depth) < 0) {
      return -1;
    }
  }
  return 0;
}

/* Encodes what msgpack.Packer(use_bin_type=True) encodes the same way,
 * for exact built-in types only; -1 (no exception set) for anything else,
 * which the caller leaves to the Python encoder. `depth` counts arrays and
 * maps as the Python codec does: [] is 1. */
static int encode_value(Out* out, PyObject* obj, int depth, int max_depth) {
  if (obj == Py_None) {
    return out_put(out, "\xc0", 1);
  }
  if (obj == Py_True || obj == Py_False) {
    return out_put(out, obj == Py_True ? "\xc3" : "\xc2", 1);
  }
  if (PyLong_CheckExact(obj)) {
    return encode_int(out, obj);
  }
  if (PyFloat_CheckExact(obj)) {
    double d = PyFloat_AS_DOUBLE(obj);
    uint64_t bits;
    memcpy(&bits, &d, sizeof bits);
    return out_be(out, 0xcb, bits, 8);
  }
  if (PyUnicode_CheckExact(obj)) {
    Py_ssize_t n;
    const char* s = PyUnicode_AsUTF8AndSize(obj, &n);
    if (s == NULL) {  /* lone surrogates: the Python codec explains */
      PyErr_Clear();
      return -1;
    }
    if (out_len(out, (size_t)n, 0xa0, 31, 0xd9, 0xda, 0xdb) < 0) {
      return -1;
    }
    return out_put(out, s, (size_t)n);
  }
  if (PyBytes_CheckExact(obj) || PyByteArray_CheckExact(obj)) {
    int bytes = PyBytes_CheckExact(obj);
    Py_ssize_t n = bytes ? PyBytes_GET_SIZE(obj) : PyByteArray_GET_SIZE(obj);
    const char* s = bytes ? PyBytes_AS_STRING(obj)
                          : PyByteArray_AS_STRING(obj);
    if (out_len(out, (size_t)n, 0, 0, 0xc4, 0xc5, 0xc6) < 0) {
      return -1;
    }
    return out_put(out, s, (size_t)n);
  }
  if (PyList_CheckExact(obj)) {
    return encode_items(out, PySequence_Fast_ITEMS(obj),
                        PyList_GET_SIZE(obj), depth, max_depth);
  }
  if (PyTuple_CheckExact(obj)) {
    return encode_items(out, PySequence_Fast_ITEMS(obj),
                        PyTuple_GET_SIZE(obj), depth, max_depth);
  }
  if (PyDict_CheckExact(obj)) {
    return encode_map(out, obj, depth, max_depth);
  }
  return -1;
}

/* msgpack input: the part of one frame body not read yet. */
typedef struct {
  const unsigned char* p;
  const unsigned char* end;
  int max_depth;
} In;

static int in_take(In* in, size_t n, const unsigned char** at) {
  if ((size_t)(in->end - in->p) < n) {
    return -1;
  }
  *at = in->p;
  in->p += n;
  return 0;
}

static int in_be(In* in, int width, uint64_t* value) {
  const unsigned char* at;
  if (in_take(in, (size_t)width, &at) < 0) {
    return -1;
  }
  uint64_t v = 0;
  for (int i = 0; i < width; ++i) {
    v = (v << 8) | at[i];
  }
  *value = v;
  return 0;
}

static PyObject* decode_value(In* in, int depth);

static PyObject* decode_array(In* in, uint64_t n, int depth) {
  /* Each item takes a byte at least: a count beyond what is left is
   * malformed, and must not make us allocate for it. */
  if (depth > in->max_depth || n > (uint64_t)(in->end - in->p)) {
    return NULL;
  }
  PyObject* list = PyList_New((Py_ssize_t)n);
  if (list == NULL) {
    return NULL;
  }
  for (uint64_t i = 0; i < n; ++i) {
    PyObject* item = decode_value(in, depth + 1);
    if (item == NULL) {
      Py_DECREF(list);
      return NULL;
    }
    PyList_SET_ITEM(list, (Py_ssize_t)i, item);
  }
  return list;
}

static PyObject* decode_map(In* in, uint64_t n, int depth) {
  if (depth > in->max_depth || n > (uint64_t)(in->end - in->p) / 2) {
    return NULL;
  }
  PyObject* dict = PyDict_New();
  if (dict == NULL) {
    return NULL;
  }
  for (uint64_t i = 0; i < n; ++i) {
    PyObject* key = decode_value(in, depth + 1);
    PyObject* value = key ? decode_value(in, depth + 1) : NULL;
    int failed = value == NULL || PyDict_SetItem(dict, key, value) < 0;
    Py_XDECREF(key);
    Py_XDECREF(value);
    if (failed) {
      Py_DECREF(dict);
      return NULL;
    }
  }
  return dict;
}

static PyObject* decode_str(In* in, uint64_t n) {
  const unsigned char* at;
  if (in_take(in, n, &at) < 0) {
    return NULL;
  }
  return PyUnicode_DecodeUTF8((const char*)at, (Py_ssize_t)n, NULL);
}

/* A new bytes object holding `n` bytes from `at`. A large one is fresh
 * memory, and faulting it in 4 KiB pages costs about as much as the copy
 * itself: its pages are advised onto transparent huge pages first (only
 * advice; nothing changes where the system offers none). */
static PyObject* new_bytes(const unsigned char* at, uint64_t n) {
  if (n < kHugeBin) {
    return PyBytes_FromStringAndSize((const char*)at, (Py_ssize_t)n);
  }
  PyObject* bytes = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)n);
  if (bytes == NULL) {
    return NULL;
  }
  char* data = PyBytes_AS_STRING(bytes);
  uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
  uintptr_t first = ((uintptr_t)data + page - 1) & ~(page - 1);
  uintptr_t end = ((uintptr_t)data + n) & ~(page - 1);
  if (end > first) {
    madvise((void*)first, end - first, MADV_HUGEPAGE);
  }
  memcpy(data, at, n);
  return bytes;
}

static PyObject* decode_bin(In* in, uint64_t n) {
  const unsigned char* at;
  if (in_take(in, n, &at) < 0) {
    return NULL;
  }
  return new_bytes(at, n);
}

static PyObject* decode_float(In* in, int width) {
  uint64_t bits;
  if (in_be(in, width, &bits) < 0) {
    return NULL;
  }
  if (width == 4) {
    uint32_t b32 = (uint32_t)bits;
    float f;
    memcpy(&f, &b32, sizeof f);
    return PyFloat_FromDouble(f);
  }
  double d;
  memcpy(&d, &bits, sizeof d);
  return PyFloat_FromDouble(d);
}

static PyObject* decode_int(In* in, int width, int is_signed) {
  uint64_t v;
  if (in_be(in, width, &v) < 0) {
    return NULL;
  }
  if (!is_signed) {
    return PyLong_FromUnsignedLongLong(v);
  }
  int shift = 64 - 8 * width;
  int64_t s = (int64_t)(v << shift) >> shift;  /* sign-extend */
  return PyLong_FromLongLong(s);
}

/* Decodes one value of the msgpack subset this module reads: everything
 * but ext types. NULL on anything else or malformed input; a Python
 * exception may then be set, and the caller clears it. */
static PyObject* decode_value(In* in, int depth) {
  const unsigned char* at;
  if (in_take(in, 1, &at) < 0) {
    return NULL;
  }
  unsigned char c = *at;
  uint64_t n;
  if (c <= 0x7f) return PyLong_FromLong(c);
  if (c >= 0xe0) return PyLong_FromLong((int8_t)c);
  if ((c & 0xf0) == 0x80) return decode_map(in, c & 0x0f, depth);
  if ((c & 0xf0) == 0x90) return decode_array(in, c & 0x0f, depth);
  if ((c & 0xe0) == 0xa0) return decode_str(in, c & 0x1f);
  switch (c) {
    case 0xc0: Py_RETURN_NONE;
    case 0xc2: Py_RETURN_FALSE;
    case 0xc3: Py_RETURN_TRUE;
    case 0xc4: return in_be(in, 1, &n) < 0 ? NULL : decode_bin(in, n);
    case 0xc5: return in_be(in, 2, &n) < 0 ? NULL : decode_bin(in, n);
    case 0xc6: return in_be(in, 4, &n) < 0 ? NULL : decode_bin(in, n);
    case 0xca: return decode_float(in, 4);
    case 0xcb: return decode_float(in, 8);
    case 0xcc: return decode_int(in, 1, 0);
    case 0xcd: return decode_int(in, 2, 0);
    case 0xce: return decode_int(in, 4, 0);
    case 0xcf: return decode_int(in, 8, 0);
    case 0xd0: return decode_int(in, 1, 1);
    case 0xd1: return decode_int(in, 2, 1);
    case 0xd2: return decode_int(in, 4, 1);
    case 0xd3: return decode_int(in, 8, 1);
    case 0xd9: return in_be(in, 1, &n) < 0 ? NULL : decode_str(in, n);
    case 0xda: return in_be(in, 2, &n) < 0 ? NULL : decode_str(in, n);
    case 0xdb: return in_be(in, 4, &n) < 0 ? NULL : decode_str(in, n);
    case 0xdc: return in_be(in, 2, &n) < 0 ? NULL : decode_array(in, n, depth);
    case 0xdd: return in_be(in, 4, &n) < 0 ? NULL : decode_array(in, n, depth);
    case 0xde: return in_be(in, 2, &n) < 0 ? NULL : decode_map(in, n, depth);
    case 0xdf: return in_be(in, 4, &n) < 0 ? NULL : decode_map(in, n, depth);
    default: return NULL;  /* ext types and the unused 0xc1 */
  }
}

/* The arguments of one CALL as (args tuple, kwargs dict or NULL); -1 when
 * the body is not one array or map this module reads. */
static int decode_arguments(const unsigned char* body, size_t len,
                            int max_depth, PyObject** args,
                            PyObject** kwargs) {
  In in = {body, body + len, max_depth};
  PyObject* value = decode_value(&in, 1);
  if (value == NULL || in.p != in.end ||
      !(PyList_CheckExact(value) || PyDict_CheckExact(value))) {
    Py_XDECREF(value);
    PyErr_Clear();
    return -1;
  }
  if (PyDict_CheckExact(value)) {
    *args = PyTuple_New(0);
    *kwargs = value;
  } else {
    *args = PyList_AsTuple(value);
    *kwargs = NULL;
    Py_DECREF(value);
  }
  if (*args == NULL) {
    Py_XDECREF(*kwargs);
    PyErr_Clear();
    return -1;
  }
  return 0;
}

/* What serve_plain_calls() works with; see its docstring. */
typedef struct {
  int fd;
  unsigned char* buf;
  Py_ssize_t cap;
  PyObject* worker;
  PyObject* plain_function;
  PyObject* on_exception;
  PyObject* on_result;
  PyObject* early_cancels;
  PyObject* state;
  PyObject* send_lock;
  Py_ssize_t max_payload;
  int max_depth;

  /* The last header seen and the function it names (a strong ref). */
  unsigned char* header;
  size_t header_len;
  PyObject* fn;
  Out out;
} Loop;

enum { kHostGone = -1, kError = -2 };

/* Receives into the buffer with the GIL released. Python signal handlers
 * run before each wait and on EINTR: a signal that came while this thread
 * ran C code (one that ended a sendmsg early, say) must not wait for the
 * next frame, as the Python loop's bytecode would not let it. Returns the
 * count, kHostGone, or kError with an exception set (a handler raised). */
static Py_ssize_t receive(Loop* loop) {
  for (;;) {
    if (PyErr_CheckSignals() < 0) {
      return kError;
    }
    ssize_t got;
    Py_BEGIN_ALLOW_THREADS
    got = recv(loop->fd, loop->buf, (size_t)loop->cap, 0);
    Py_END_ALLOW_THREADS
    if (got > 0) {
      return got;
    }
    if (got == 0 || errno != EINTR) {
      return kHostGone;
    }
  }
}

/* Sends prefix and body under the worker's send lock (its FrameWriter's),
 * so that frames of other threads (LOG) never interleave. Returns 0,
 * kHostGone or kError. */
static int send_result(Loop* loop, uint64_t call_id) {
  unsigned char prefix[kPrefixLen] = {kResult};
  uint32_t body_len = (uint32_t)loop->out.len;
  for (int i = 0; i < 4; ++i) {
    prefix[8 + i] = (unsigned char)(body_len >> (8 * i));
  }
  for (int i = 0; i < 8; ++i) {
    prefix[12 + i] = (unsigned char)(call_id >> (8 * i));
  }
  PyObject* locked = PyObject_CallMethod(loop->send_lock, "acquire", NULL);
  if (locked == NULL) {
    return kError;
  }
  Py_DECREF(locked);

  struct iovec iov[2] = {{prefix, kPrefixLen},
                         {loop->out.data, loop->out.len}};
  size_t left = kPrefixLen + loop->out.len;
  int status = 0;
  while (left > 0 && status == 0) {
    ssize_t sent;
    struct msghdr msg = {0};
    msg.msg_iov = iov[0].iov_len ? iov : iov + 1;
    msg.msg_iovlen = iov[0].iov_len ? 2 : 1;
    Py_BEGIN_ALLOW_THREADS
    sent = sendmsg(loop->fd, &msg, MSG_NOSIGNAL);
    Py_END_ALLOW_THREADS
    if (sent < 0) {
      if (errno != EINTR) {
        status = kHostGone;
      } else if (PyErr_CheckSignals() < 0) {
        status = kError;
      }
      continue;
    }
    left -= (size_t)sent;
    /* A signal ends a blocked sendmsg early rather than with EINTR once
     * part is sent; its handler runs before the next wait, as between
     * the Python sender's calls. */
    if (left > 0 && PyErr_CheckSignals() < 0) {
      status = kError;
    }
    for (int i = 0; i < 2 && sent > 0; ++i) {
      size_t step = (size_t)sent < iov[i].iov_len ? (size_t)sent
                                                   : iov[i].iov_len;
      iov[i].iov_base = (char*)iov[i].iov_base + step;
      iov[i].iov_len -= step;
      sent -= (ssize_t)step;
    }
  }

  PyObject* exc_type;
  PyObject* exc_value;
  PyObject* exc_tb;
  PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
  PyObject* released = PyObject_CallMethod(loop->send_lock, "release", NULL);
  Py_XDECREF(released);
  if (exc_type != NULL) {
    PyErr_Restore(exc_type, exc_value, exc_tb);
  }
  return released == NULL ? kError : status;
}

/* The function the header names, from the one-entry cache or the
 * worker's plain_function(); NULL (no exception) when the general path
 * must take the call, or with an exception when the callback raised. */
static PyObject* function_for(Loop* loop, const unsigned char* header,
                              size_t len) {
  if (loop->fn != NULL && len == loop->header_len &&
      memcmp(header, loop->header, len) == 0) {
    return loop->fn;
  }
  PyObject* raw = PyBytes_FromStringAndSize((const char*)header,
                                            (Py_ssize_t)len);
  if (raw == NULL) {
    return NULL;
  }
  PyObject* fn = PyObject_CallOneArg(loop->plain_function, raw);
  Py_DECREF(raw);
  if (fn == NULL || fn == Py_None) {
    Py_XDECREF(fn);
    return NULL;
  }
  unsigned char* copy = PyMem_Realloc(loop->header, len ? len : 1);
  if (copy == NULL) {
    Py_DECREF(fn);
    return NULL;
  }
  memcpy(copy, header, len);
  loop->header = copy;
  loop->header_len = len;
  Py_XSETREF(loop->fn, fn);
  return fn;
}

/* Marks `call_id` as the worker's current call (what its control thread
 * cancels and reports busy). Returns 1 when a CANCEL for it came first
 * (the general path answers it), 0, or -1 with an exception. */
static int begin_call(Loop* loop, uint64_t call_id) {
  PyObject* id = PyLong_FromUnsignedLongLong(call_id);
  if (id == NULL || PyObject_SetAttrString(loop->state, "id", id) < 0 ||
      PyObject_SetAttrString(loop->state, "cancelled", Py_False) < 0 ||
      PyObject_SetAttrString(loop->worker, "_current", loop->state) < 0) {
    Py_XDECREF(id);
    return -1;
  }
  int early = 0;
  Py_ssize_t waiting = PyObject_Length(loop->early_cancels);
  if (waiting > 0) {
    early = PySequence_Contains(loop->early_cancels, id);
  }
  Py_DECREF(id);
  if (waiting < 0 || early < 0) {
    return -1;
  }
  if (early &&
      PyObject_SetAttrString(loop->worker, "_current", Py_None) < 0) {
    return -1;
  }
  return early;
}

/* Hands a call's exception to the worker's on_exception(call_id, exc). */
static int report_exception(Loop* loop, uint64_t call_id) {
  PyObject* type;
  PyObject* value;
  PyObject* tb;
  PyErr_Fetch(&type, &value, &tb);
  PyErr_NormalizeException(&type, &value, &tb);
  if (tb != NULL && value != NULL) {
    PyException_SetTraceback(value, tb);
  }
  PyObject* result = PyObject_CallFunction(
      loop->on_exception, "KO", (unsigned long long)call_id,
      value ? value : Py_None);
  Py_XDECREF(type);
  Py_XDECREF(value);
  Py_XDECREF(tb);
  Py_XDECREF(result);
  return result == NULL ? -1 : 0;
}

/* Encodes and sends a call's result, or hands it to the worker's
 * on_result(call_id, result) when this module cannot. */
static int deliver(Loop* loop, uint64_t call_id, PyObject* result) {
  loop->out.len = 0;
  int big = (PyBytes_CheckExact(result) &&
             PyBytes_GET_SIZE(result) >= kBigResult) ||
            (PyByteArray_CheckExact(result) &&
             PyByteArray_GET_SIZE(result) >= kBigResult);
  if (big || encode_value(&loop->out, result, 1, loop->max_depth) < 0 ||
      loop->out.len > (size_t)loop->max_payload) {
    PyObject* done = PyObject_CallFunction(
        loop->on_result, "KO", (unsigned long long)call_id, result);
    Py_XDECREF(done);
    return done == NULL ? kError : 0;
  }
  /* The call is over once the host can see its final frame. */
  if (PyObject_SetAttrString(loop->worker, "_current", Py_None) < 0) {
    return kError;
  }
  return send_result(loop, call_id);
}

/* One frame taken from the buffer: 1 when it was a call served here, 0
 * when the general path must read it, or kHostGone / kError. */
static int serve_one(Loop* loop, Py_ssize_t got) {
  const unsigned char* b = loop->buf;
  if (got < kPrefixLen || b[0] != kCall || b[1] != 0) {
    return 0;
  }
  uint32_t header_len, body_len;
  uint64_t call_id;
  memcpy(&header_len, b + 4, 4);  /* the prefix: docs/protocol.md */
  memcpy(&body_len, b + 8, 4);
  memcpy(&call_id, b + 12, 8);
  header_len = le32toh(header_len);
  body_len = le32toh(body_len);
  call_id = le64toh(call_id);
  uint64_t total = (uint64_t)kPrefixLen + header_len + body_len;
  if (total != (uint64_t)got || body_len == 0 ||
      body_len > (uint64_t)loop->max_payload ||
      header_len > kMaxHeaderLen) {
    return 0;
  }

  PyObject* fn = function_for(loop, b + kPrefixLen, header_len);
  if (fn == NULL) {
    return PyErr_Occurred() ? kError : 0;
  }
  PyObject* args;
  PyObject* kwargs;
  if (decode_arguments(b + kPrefixLen + header_len, body_len,
                       loop->max_depth, &args, &kwargs) < 0) {
    return 0;
  }
  int early = begin_call(loop, call_id);
  if (early != 0) {
    Py_DECREF(args);
    Py_XDECREF(kwargs);
    return early < 0 ? kError : 0;
  }

  PyObject* result = PyObject_Call(fn, args, kwargs);
  Py_DECREF(args);
  Py_XDECREF(kwargs);
  if (result == NULL) {
    return report_exception(loop, call_id) < 0 ? kError : 1;
  }
  int status = deliver(loop, call_id, result);
  Py_DECREF(result);
  return status < 0 ? status : 1;
}

static PyObject* serve_plain_calls(PyObject* module, PyObject* argv) {
  (void)module;
  Loop loop = {0};
  PyObject* buffer;
  if (!PyArg_ParseTuple(argv, "iOOOOOOOOni:serve_plain_calls", &loop.fd,
                        &buffer, &loop.worker, &loop.plain_function,
                        &loop.on_exception, &loop.on_result,
                        &loop.early_cancels, &loop.state, &loop.send_lock,
                        &loop.max_payload, &loop.max_depth)) {
    return NULL;
  }
  Py_buffer view;
  if (PyObject_GetBuffer(buffer, &view, PyBUF_WRITABLE) < 0) {
    return NULL;
  }
  loop.buf = view.buf;
  loop.cap = view.len;

  Py_ssize_t result = kError;
  for (;;) {
    Py_ssize_t got = receive(&loop);
    if (got < 0) {
      result = got;
      break;
    }
    int served = serve_one(&loop, got);
    if (served <= 0) {
      result = served < 0 ? served : got;
      break;
    }
  }

  PyBuffer_Release(&view);
  Py_XDECREF(loop.fn);
  PyMem_Free(loop.header);
  PyMem_Free(loop.out.data);
  if (result == kError) {
    return NULL;
  }
  return PyLong_FromSsize_t(result);
}

static PyObject* decode(PyObject* module, PyObject* argv) {
  (void)module;
  Py_buffer data;
  int max_depth;
  if (!PyArg_ParseTuple(argv, "y*i:decode", &data, &max_depth)) {
    return NULL;
  }
  In in = {data.buf, (const unsigned char*)data.buf + data.len, max_depth};
  PyObject* value = decode_value(&in, 1);
  PyBuffer_Release(&data);
  if (value != NULL && in.p != in.end) {
    Py_CLEAR(value);
  }
  if (value == NULL) {
    PyErr_Clear();
    PyErr_SetString(PyExc_ValueError,
                    "not a value this decoder reads; use the general one");
  }
  return value;
}

static PyMethodDef kMethods[] = {
    {"decode", decode, METH_VARARGS,
     "decode(data, max_depth) -> value\n\n"
     "Decodes the one msgpack value in `data` as the worker's codec does,\n"
     "large bins onto huge pages. Raises ValueError for anything it does\n"
     "not read (ext types, unhashable keys, bad UTF-8, nesting deeper\n"
     "than max_depth, malformed or trailing bytes): the caller's general\n"
     "decoder then gives the exact error or value."},
    {"serve_plain_calls", serve_plain_calls, METH_VARARGS,
     "serve_plain_calls(fd, buffer, worker, plain_function, on_exception,\n"
     "                  on_result, early_cancels, state, send_lock,\n"
     "                  max_payload, max_depth) -> int\n\n"
     "Receives CALL frames on `fd` into `buffer` (a bytearray with\n"
     "nothing unread in it) and serves each that is one whole frame of a\n"
     "function plain_function(raw_header) returns. Returns the length of\n"
     "the first frame it leaves to the general path (still in `buffer`),\n"
     "or -1 when the host is gone."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef kModule = {
    PyModuleDef_HEAD_INIT, "_snakepit_native",
    "The Snakepit worker's small-call loop in C (see snakepit._worker).",
    -1, kMethods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__snakepit_native(void) {
  return PyModule_Create(&kModule);
}
