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

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

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
};
}  // namespace

extern "C" {

const char* vgg_dist_error() { return vgg_last_error.c_str(); }

// A group of `world` ranks meeting at host:port (rank 0 serves the store
// unless `client_only`, e.g. torchrun's agent serves it), its keys under
// `prefix` (one per elastic restart, as torch's own env:// rendezvous).
// NULL on error.
void* vgg_dist_init(const char* host, int port, int rank, int world, int client_only,
                    int64_t timeout_ms, const char* prefix) {
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
    // Gloo's own socket: the interface GLOO_SOCKET_IFNAME names, loopback
    // for a run on this machine, else this host's address (as torch does).
    const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
    std::string h(host);
    if (ifname != nullptr && *ifname != 0) {
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    } else if (h == "127.0.0.1" || h == "localhost" || h == "::1") {
      options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(host));
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
// elastic restart's ranks read what the attempt before them wrote).
int vgg_dist_store_set(void* group, const char* key, const char* value) {
  return vgg_guard([&] {
    std::string v(value);
    static_cast<Group*>(group)->store->set(key, std::vector<uint8_t>(v.begin(), v.end()));
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

int vgg_dist_all_reduce_sum(void* group, void* tensor) {
  return vgg_guard([&] {
    std::vector<at::Tensor> ts{*static_cast<at::Tensor*>(tensor)};
    static_cast<Group*>(group)->for_tensor(ts[0]).allreduce(ts)->wait();
  });
}

int vgg_dist_broadcast(void* group, void* tensor, int root) {
  return vgg_guard([&] {
    std::vector<at::Tensor> ts{*static_cast<at::Tensor*>(tensor)};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    static_cast<Group*>(group)->for_tensor(ts[0]).broadcast(ts, o)->wait();
  });
}

void vgg_dist_free(void* group) {
  vgg_guard([&] { delete static_cast<Group*>(group); });
}
}
