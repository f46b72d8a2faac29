// The c10d shim: PyTorch's own process groups (Gloo; NCCL where built) for
// vggtrain, behind a C interface. Every C++ exception becomes an error
// string (vgg_dist_error), never an unwind into Rust.
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstring>
#include <memory>
#include <string>

namespace {
thread_local std::string last_error;

template <typename F>
int guard(F&& f) {
  try {
    f();
    return 0;
  } catch (const c10::Error& e) {
    last_error = e.what_without_backtrace();
  } catch (const std::exception& e) {
    last_error = e.what();
  } catch (...) {
    last_error = "unknown C++ exception";
  }
  return -1;
}

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
};
}  // namespace

extern "C" {

const char* vgg_dist_error() { return last_error.c_str(); }

// A group of `world` ranks meeting at host:port (rank 0 serves the store
// unless `client_only`, e.g. torchrun's agent serves it). NULL on error.
void* vgg_dist_init(const char* host, int port, int rank, int world, int client_only,
                    int64_t timeout_ms) {
  Group* out = nullptr;
  guard([&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<uint16_t>(port);
    opts.isServer = rank == 0 && !client_only;
    opts.numWorkers = world;
    opts.waitWorkers = false;
    opts.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    auto store = c10::make_intrusive<c10d::PrefixStore>("vggtrain/gloo", tcp);
    auto options = c10d::ProcessGroupGloo::Options::create(timeout);
    options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(host));
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
    out = new Group{tcp, pg};
  });
  return out;
}

int vgg_dist_all_reduce_sum(void* group, void* tensor) {
  return guard([&] {
    std::vector<at::Tensor> ts{*static_cast<at::Tensor*>(tensor)};
    static_cast<Group*>(group)->backend->allreduce(ts)->wait();
  });
}

int vgg_dist_broadcast(void* group, void* tensor, int root) {
  return guard([&] {
    std::vector<at::Tensor> ts{*static_cast<at::Tensor*>(tensor)};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    static_cast<Group*>(group)->backend->broadcast(ts, o)->wait();
  });
}

int vgg_dist_barrier(void* group) {
  return guard([&] { static_cast<Group*>(group)->backend->barrier()->wait(); });
}

void vgg_dist_free(void* group) {
  guard([&] { delete static_cast<Group*>(group); });
}
}
