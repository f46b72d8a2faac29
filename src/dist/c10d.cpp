// The c10d shim: PyTorch's own process groups (Gloo; NCCL where built) for
// vggtrain, behind a C interface (errors: vgg_dist_error).
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "../native/guard.hpp"

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace {
// Gloo for CPU tensors (and CUDA ones without NCCL), NCCL for CUDA tensors
// where built and a GPU is there: torch's own "cpu:gloo,cuda:nccl".
struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> gloo;
  c10::intrusive_ptr<c10d::Backend> nccl;

  c10d::Backend& for_tensor(const at::Tensor& t) {
    return t.is_cuda() && nccl ? *nccl : *gloo;
  }

  // Starts `op` on `t`'s backend. Gloo's are started one at a time in the
  // process: PyTorch 2.11's flight recorder, one per process, updates a map
  // outside its lock as a group starts its first collective
  // (pytorch/pytorch#179449), and two groups of one process starting at
  // once corrupted it (SIGSEGV). Starting is queueing; the wait is outside
  // the lock. NCCL's are not behind it: the first one waits for every rank
  // (its communicator is made then), and vggtrain has one group a process.
  template <typename Op>
  c10::intrusive_ptr<c10d::Work> start(const at::Tensor& t, Op op) {
    auto& backend = for_tensor(t);
    if (&backend != gloo.get()) return op(backend);
    static std::mutex one_at_a_time;
    std::lock_guard<std::mutex> lock(one_at_a_time);
    return op(backend);
  }
};
}  // namespace

extern "C" {

const char* vgg_dist_error() { return vgg_last_error.c_str(); }

// A group of `world` ranks meeting at host:port (rank 0 serves the store
// unless `client_only`, e.g. torchrun's agent serves it), its keys under
// `prefix` (one per elastic restart, as torch's own env:// rendezvous).
// Gloo's own sockets use the interface GLOO_SOCKET_IFNAME names, else
// `local` (this host's address towards `host`), else torch's default.
// NULL on error.
void* vgg_dist_init(const char* host, int port, int rank, int world, int client_only,
                    int64_t timeout_ms, const char* prefix, const char* local) {
  Group* out = nullptr;
  vgg_guard([&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<uint16_t>(port);
    opts.isServer = rank == 0 && !client_only;
    opts.numWorkers = world;
    opts.waitWorkers = false;
    opts.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    auto store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix) + "/gloo", tcp);
    auto options = c10d::ProcessGroupGloo::Options::create(timeout);
    const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
    if (ifname != nullptr && *ifname != 0) {
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    } else if (*local != 0) {
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(local));
    } else {
      options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
    c10::intrusive_ptr<c10d::Backend> nccl;
#ifdef USE_C10D_NCCL
    // Its communicators are made at the first collective on a CUDA tensor.
    if (c10::cuda::device_count() > 0) {
      auto nstore = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix) + "/nccl", tcp);
      auto nopts = c10d::ProcessGroupNCCL::Options::create();
      nopts->timeout = timeout;
      nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(nstore, rank, world, nopts);
    }
#endif
    out = new Group{tcp, gloo, nccl};
  });
  return out;
}

// Sets `key` in the store itself (outside every attempt's prefix: an
// elastic restart's ranks read what the attempt before them wrote), and
// returns once the store holds it: a set is not answered, but the check
// after it on the same connection is, so a rank told afterwards (by a
// collective) finds the key.
int vgg_dist_store_set(void* group, const char* key, const char* value) {
  return vgg_guard([&] {
    std::string v(value);
    auto& store = static_cast<Group*>(group)->store;
    store->set(key, std::vector<uint8_t>(v.begin(), v.end()));
    store->check({key});
  });
}

// Copies `key`'s value into `out` (at most `cap` bytes, NUL-terminated):
// 1 when the key is set, 0 when not, -1 on error. Does not wait.
int vgg_dist_store_get(void* group, const char* key, char* out, int64_t cap) {
  int found = 0;
  int code = vgg_guard([&] {
    auto& store = static_cast<Group*>(group)->store;
    if (!store->check({key})) return;
    auto v = store->get(key);
    size_t n = std::min(v.size(), static_cast<size_t>(cap - 1));
    std::memcpy(out, v.data(), n);
    out[n] = 0;
    found = 1;
  });
  return code == 0 ? found : -1;
}

// The backend CUDA tensors go through: "nccl" or "gloo".
const char* vgg_dist_cuda_backend(void* group) {
  return static_cast<Group*>(group)->nccl ? "nccl" : "gloo";
}

// The collectives wait for the other ranks up to `timeout_ms`.
int vgg_dist_all_reduce_sum(void* group, void* tensor, int64_t timeout_ms) {
  return vgg_guard([&] {
    std::vector<at::Tensor> ts{*static_cast<at::Tensor*>(tensor)};
    c10d::AllreduceOptions o;
    o.timeout = std::chrono::milliseconds(timeout_ms);
    static_cast<Group*>(group)->start(ts[0], [&](auto& b) { return b.allreduce(ts, o); })->wait();
  });
}

int vgg_dist_broadcast(void* group, void* tensor, int root, int64_t timeout_ms) {
  return vgg_guard([&] {
    std::vector<at::Tensor> ts{*static_cast<at::Tensor*>(tensor)};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    o.timeout = std::chrono::milliseconds(timeout_ms);
    static_cast<Group*>(group)->start(ts[0], [&](auto& b) { return b.broadcast(ts, o); })->wait();
  });
}

// Shuts the backends down as destroy_process_group() does (NCCL warns at
// exit otherwise), then frees the group. Every collective here was waited
// for, so none is pending.
void vgg_dist_free(void* group) {
  vgg_guard([&] {
    auto* g = static_cast<Group*>(group);
    if (g->nccl) g->nccl->shutdown();
    delete g;
  });
}
}

// Overlapped gradient sums (as DDP's reducer): each parameter's gradient is
// copied into its bucket as autograd accumulates it, and a bucket is
// all-reduced (asynchronously) as soon as it is whole, in bucket order on
// every rank; `vgg_overlap_finish` waits for them after backward and copies
// the sums back into the gradients.
namespace {
struct Overlap {
  struct Bucket {
    std::vector<size_t> members;
    at::Tensor flat;
    size_t pending = 0;
    c10::intrusive_ptr<c10d::Work> work;
  };
  Group* group;
  std::vector<at::Tensor> params;
  std::vector<size_t> bucket_of;
  std::vector<int64_t> offset_of;
  std::vector<Bucket> buckets;
  size_t next = 0;  // the first bucket not yet launched
  std::mutex m;
  std::string error;

  // A parameter's gradient is there (autograd's thread).
  void ready(size_t i) {
    std::lock_guard<std::mutex> lock(m);
    if (!error.empty()) return;
    int code = vgg_guard([&] {
      auto& b = buckets[bucket_of[i]];
      const auto& p = params[i];
      b.flat.narrow(0, offset_of[i], p.numel()).copy_(p.grad().reshape({-1}));
      b.pending -= 1;
      while (next < buckets.size() && buckets[next].pending == 0) {
        std::vector<at::Tensor> ts{buckets[next].flat};
        buckets[next].work = group->start(ts[0], [&](auto& b) { return b.allreduce(ts); });
        next += 1;
      }
    });
    if (code != 0) error = vgg_last_error;
  }
};

struct ReadyHook : torch::autograd::PostAccumulateGradHook {
  Overlap* overlap;
  size_t index;
  ReadyHook(Overlap* o, size_t i) : overlap(o), index(i) {}
  void operator()(const torch::autograd::Variable&) override { overlap->ready(index); }
};
}  // namespace

extern "C" {
// Hooks `n` parameters, parameter i into bucket `bucket_of[i]` (buckets
// numbered from 0 in the order they are summed, each one's parameters
// consecutive). NULL on error.
void* vgg_overlap_new(void* group, void** params, const int64_t* bucket_of, int64_t n) {
  Overlap* out = nullptr;
  vgg_guard([&] {
    auto o = std::make_unique<Overlap>();
    o->group = static_cast<Group*>(group);
    int64_t offset = 0;
    for (int64_t i = 0; i < n; i++) {
      const auto& p = *static_cast<at::Tensor*>(params[i]);
      if (static_cast<size_t>(bucket_of[i]) == o->buckets.size()) {
        o->buckets.emplace_back();
        offset = 0;
      }
      o->bucket_of.push_back(bucket_of[i]);
      o->offset_of.push_back(offset);
      o->buckets.back().members.push_back(i);
      offset += p.numel();
      o->params.push_back(p);
    }
    for (auto& bucket : o->buckets) {
      int64_t numel = 0;
      for (auto i : bucket.members) numel += o->params[i].numel();
      bucket.flat = at::empty({numel}, o->params[bucket.members[0]].options());
      bucket.pending = bucket.members.size();
    }
    for (size_t i = 0; i < o->params.size(); i++) {
      torch::autograd::impl::set_post_acc_grad_hooks(o->params[i], std::make_unique<ReadyHook>(o.get(), i));
    }
    out = o.release();
  });
  return out;
}

// After backward: waits for every bucket's sum and puts it into the
// gradients, ready for the next step. -1 when a collective failed, -2 when
// a gradient never came (then no collective was waited for).
int vgg_overlap_finish(void* overlap) {
  auto* o = static_cast<Overlap*>(overlap);
  std::lock_guard<std::mutex> lock(o->m);
  auto reset = [&] {
    for (auto& b : o->buckets) {
      b.pending = b.members.size();
      b.work.reset();
    }
    o->next = 0;
  };
  if (o->error.empty() && o->next < o->buckets.size()) {
    reset();
    vgg_last_error = "a parameter got no gradient in this backward pass";
    return -2;
  }
  int code = vgg_guard([&] {
    if (!o->error.empty()) throw std::runtime_error(o->error);
    for (auto& b : o->buckets) {
      b.work->wait();
      for (auto i : b.members) {
        auto& p = o->params[i];
        p.mutable_grad().copy_(b.flat.narrow(0, o->offset_of[i], p.numel()).view(p.sizes()));
      }
    }
  });
  o->error.clear();
  reset();
  return code;
}

// Unhooks the parameters and frees the buckets.
void vgg_overlap_free(void* overlap) {
  vgg_guard([&] {
    auto* o = static_cast<Overlap*>(overlap);
    for (auto& p : o->params) torch::autograd::impl::set_post_acc_grad_hooks(p, nullptr);
    delete o;
  });
}
}
