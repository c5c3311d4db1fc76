#include "snakepit/admin/metrics.h"

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "prometheus/text_serializer.h"

namespace snakepit::admin {
namespace {

using prometheus::Counter;
using prometheus::Family;
using prometheus::Gauge;
using prometheus::Histogram;
using prometheus::Labels;

// Clients name the functions they call, so a client that names a new one
// per call would grow every scrape without bound. Past this many names in
// a pool, calls are counted under kOtherFunction.
constexpr size_t kMaxFunctionsPerPool = 256;
constexpr char kOtherFunction[] = "_other";

// Seconds, 100 µs to 60 s in 1-2.5-5 steps: a call spans a 10 µs ping to
// minutes of model work, and queue waits spread as widely under load.
const Histogram::BucketBoundaries& Buckets() {
  static const Histogram::BucketBoundaries buckets = {
      0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
      0.1,    0.25,    0.5,    1,     2.5,    5,     10,   30,    60};
  return buckets;
}

// A render-time counter series and the cumulative value it was set to.
struct CounterSeries {
  Counter* counter = nullptr;
  uint64_t value = 0;
};

// Makes `family` hold exactly the series in `values`, adding, updating,
// and removing those that an earlier call added and `values` lacks.
void SyncGauges(Family<Gauge>& family, const std::map<Labels, double>& values,
                std::map<Labels, Gauge*>& series) {
  for (auto it = series.begin(); it != series.end();) {
    if (values.count(it->first) == 0) {
      family.Remove(it->second);
      it = series.erase(it);
    } else {
      ++it;
    }
  }
  for (const auto& [labels, value] : values) {
    Gauge*& gauge = series[labels];
    if (gauge == nullptr) {
      gauge = &family.Add(labels);
    }
    gauge->Set(value);
  }
}

// As SyncGauges, for cumulative counts owned by someone else. A counter
// only goes up, so it is raised by the growth since the last render; when
// the count fell (its owner restarted), the series is recreated, which
// Prometheus reads as a counter reset.
void SyncCounters(Family<Counter>& family,
                  const std::map<Labels, uint64_t>& values,
                  std::map<Labels, CounterSeries>& series) {
  for (auto it = series.begin(); it != series.end();) {
    auto found = values.find(it->first);
    if (found == values.end() || found->second < it->second.value) {
      family.Remove(it->second.counter);
      it = series.erase(it);
    } else {
      ++it;
    }
  }
  for (const auto& [labels, value] : values) {
    CounterSeries& s = series[labels];
    if (s.counter == nullptr) {
      s.counter = &family.Add(labels);
    }
    s.counter->Increment(static_cast<double>(value - s.value));
    s.value = value;
  }
}

// The series a call of one function is recorded in. The pointers stay
// valid: these series are never removed.
struct CallSeries {
  std::string function;  // its label: the name or kOtherFunction
  Histogram* duration = nullptr;
  Histogram* queue_wait = nullptr;  // the pool's
  std::map<std::string, Counter*, std::less<>> calls_by_code;
};

// One pool's call series: at most kMaxFunctionsPerPool functions by name,
// then one for every other name.
struct PoolSeries {
  std::unordered_map<std::string, std::unique_ptr<CallSeries>> functions;
  std::unique_ptr<CallSeries> other;
};

}  // namespace

struct Metrics::Impl {
  explicit Impl(const std::string& version);

  // The series to record a call of `function` in, made on first use;
  // see kMaxFunctionsPerPool. Caller holds series_mu.
  CallSeries& SeriesLocked(const std::string& pool,
                           const std::string& function);
  // Makes the series for `function` (a label) of `pool`.
  std::unique_ptr<CallSeries> MakeSeries(const std::string& pool,
                                         const std::string& function);
  void SyncPools(const std::vector<PoolGauges>& gauges);

  // Fixed at construction. prometheus-cpp families and metrics are
  // thread-safe.
  const std::shared_ptr<prometheus::Registry> registry =
      std::make_shared<prometheus::Registry>();
  Family<Counter>& calls;
  Family<Counter>& refused;
  Family<Histogram>& call_duration;
  Family<Histogram>& queue_wait;
  Family<Gauge>& queue_depth;
  Family<Gauge>& workers;
  Family<Counter>& restarts;
  Family<Gauge>& pool_state;

  // Looking a series up in a family builds and hashes its label map
  // under the family's lock, about 1.5 us for a call's three series;
  // this cache makes it one hash lookup. Guarded by series_mu.
  std::mutex series_mu;
  std::map<std::string, PoolSeries, std::less<>> series;
  std::map<std::pair<std::string, std::string>, Counter*> refused_series;

  // Guarded by render_mu: the series Render() set, by label set.
  std::mutex render_mu;
  std::map<Labels, Gauge*> depth_series;
  std::map<Labels, Gauge*> worker_series;
  std::map<Labels, CounterSeries> restart_series;
  std::map<Labels, Gauge*> state_series;
};

Metrics::Impl::Impl(const std::string& version)
    : calls(prometheus::BuildCounter()
                .Name("snakepit_calls_total")
                .Help("Calls finished, by pool, function and status code.")
                .Register(*registry)),
      refused(prometheus::BuildCounter()
                  .Name("snakepit_calls_refused_total")
                  .Help("Calls refused before they reached a pool, by "
                        "status code and reason.")
                  .Register(*registry)),
      call_duration(prometheus::BuildHistogram()
                        .Name("snakepit_call_duration_seconds")
                        .Help("Time from submit to result, queue included.")
                        .Register(*registry)),
      queue_wait(prometheus::BuildHistogram()
                     .Name("snakepit_queue_wait_seconds")
                     .Help("Time calls waited for a worker.")
                     .Register(*registry)),
      queue_depth(prometheus::BuildGauge()
                      .Name("snakepit_queue_depth")
                      .Help("Calls waiting for a worker.")
                      .Register(*registry)),
      workers(prometheus::BuildGauge()
                  .Name("snakepit_workers")
                  .Help("Worker processes, by state.")
                  .Register(*registry)),
      restarts(prometheus::BuildCounter()
                   .Name("snakepit_worker_restarts_total")
                   .Help("Workers replaced, by reason.")
                   .Register(*registry)),
      pool_state(prometheus::BuildGauge()
                     .Name("snakepit_pool_state")
                     .Help("1 for the state each pool is in (starting, "
                           "ready, degraded, closed), else 0.")
                     .Register(*registry)) {
  prometheus::BuildGauge()
      .Name("snakepit_build_info")
      .Help("Always 1; the version is in the label.")
      .Register(*registry)
      .Add({{"version", version}})
      .Set(1);
}

CallSeries& Metrics::Impl::SeriesLocked(const std::string& pool,
                                        const std::string& function) {
  PoolSeries& in_pool = series[pool];
  auto it = in_pool.functions.find(function);
  if (it != in_pool.functions.end()) {
    return *it->second;
  }
  if (in_pool.functions.size() < kMaxFunctionsPerPool) {
    auto made = in_pool.functions.emplace(function,
                                          MakeSeries(pool, function));
    return *made.first->second;
  }
  if (in_pool.other == nullptr) {
    in_pool.other = MakeSeries(pool, kOtherFunction);
  }
  return *in_pool.other;
}

std::unique_ptr<CallSeries> Metrics::Impl::MakeSeries(
    const std::string& pool, const std::string& function) {
  auto made = std::make_unique<CallSeries>();
  made->function = function;
  made->duration =
      &call_duration.Add({{"pool", pool}, {"function", function}}, Buckets());
  made->queue_wait = &queue_wait.Add({{"pool", pool}}, Buckets());
  return made;
}

void Metrics::Impl::SyncPools(const std::vector<PoolGauges>& gauges) {
  std::map<Labels, double> depths;
  std::map<Labels, double> worker_counts;
  std::map<Labels, uint64_t> restart_counts;
  std::map<Labels, double> states;
  for (const PoolGauges& pool : gauges) {
    for (const char* state : {"starting", "ready", "degraded", "closed"}) {
      states[{{"pool", pool.pool}, {"state", state}}] = pool.state == state;
    }
    depths[{{"pool", pool.pool}}] = static_cast<double>(pool.queue_depth);
    for (const auto& [state, count] : pool.workers_by_state) {
      worker_counts[{{"pool", pool.pool}, {"state", state}}] = count;
    }
    for (const auto& [reason, count] : pool.restarts_by_reason) {
      restart_counts[{{"pool", pool.pool}, {"reason", reason}}] = count;
    }
  }
  SyncGauges(queue_depth, depths, depth_series);
  SyncGauges(workers, worker_counts, worker_series);
  SyncCounters(restarts, restart_counts, restart_series);
  SyncGauges(pool_state, states, state_series);
}

Metrics::Metrics(const std::string& version)
    : impl_(std::make_unique<Impl>(version)) {}

Metrics::~Metrics() = default;

void Metrics::RecordCall(const std::string& pool, const std::string& function,
                         const std::string& code, absl::Duration duration,
                         absl::Duration queue_wait) {
  Counter* calls = nullptr;
  Histogram* durations = nullptr;
  Histogram* waits = nullptr;
  {
    std::lock_guard<std::mutex> lock(impl_->series_mu);
    CallSeries& series = impl_->SeriesLocked(pool, function);
    auto it = series.calls_by_code.find(code);
    if (it == series.calls_by_code.end()) {
      Counter* counter = &impl_->calls.Add(
          {{"pool", pool}, {"function", series.function}, {"code", code}});
      it = series.calls_by_code.emplace(code, counter).first;
    }
    calls = it->second;
    durations = series.duration;
    waits = series.queue_wait;
  }
  calls->Increment();
  durations->Observe(absl::ToDoubleSeconds(duration));
  waits->Observe(absl::ToDoubleSeconds(queue_wait));
}

void Metrics::RecordRefused(const std::string& code,
                           const std::string& reason) {
  Counter* counter = nullptr;
  {
    std::lock_guard<std::mutex> lock(impl_->series_mu);
    Counter*& found = impl_->refused_series[{code, reason}];
    if (found == nullptr) {
      found = &impl_->refused.Add({{"code", code}, {"reason", reason}});
    }
    counter = found;
  }
  counter->Increment();
}

std::string Metrics::Render(const std::vector<PoolGauges>& gauges) {
  std::lock_guard<std::mutex> lock(impl_->render_mu);
  impl_->SyncPools(gauges);
  return prometheus::TextSerializer().Serialize(impl_->registry->Collect());
}

}  // namespace snakepit::admin
