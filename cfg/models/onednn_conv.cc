// oneDNN convolutions for XLA:CPU, as XLA FFI handlers: forward, input gradient and kernel gradient of a
// stride-1 float32 convolution with NHWC activations and HWIO kernels, zero padding (pt, pb, pl, pr).
// Built and loaded by cfg/models/onednn_conv.py, against oneDNN 2.x (Debian 12's libdnnl-dev) or 3.x (newer
// distributions, or pip's onednn-cpu-gomp); XLA's own CPU convolutions (Eigen) are 1.3-3x slower at the
// U-Net's small channel counts (experiments/throughput.md, section 8).
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <omp.h>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

enum Kind { kForward = 0, kInputGradient = 1, kKernelGradient = 2 };

struct Shape {  // one convolution: x [B, H, W, I], k [KH, KW, I, O], y [B, Ho, Wo, O]
  int64_t b, h, w, i, o, kh, kw, ho, wo, pt, pb, pl, pr;
  auto Tie() const { return std::tie(b, h, w, i, o, kh, kw, ho, wo, pt, pb, pl, pr); }
  bool operator<(const Shape& other) const { return Tie() < other.Tie(); }
};

struct Primitive {
  dnnl::primitive primitive;
  dnnl::memory::desc x, y, kernel, hwio;  // kernel: the layout the primitive wants; hwio: the caller's
  size_t scratchpad_bytes;
  std::string implementation;
};

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

template <typename Kernel>
void Fill(Primitive* p, const typename Kernel::primitive_desc& pd, const dnnl::memory::desc& kernel) {
  p->primitive = Kernel(pd);
  p->kernel = kernel;
  p->scratchpad_bytes = pd.scratchpad_desc().get_size();
  p->implementation = pd.impl_info_str();
}

// Primitives are created once per (kind, shape) and shared: executing one is thread-safe with a
// scratchpad per call (scratchpad_mode::user).
std::shared_ptr<const Primitive> Get(Kind kind, const Shape& s) {
  static std::mutex mutex;
  static std::map<std::pair<int, Shape>, std::shared_ptr<const Primitive>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto found = cache.find({kind, s});
  if (found != cache.end()) return found->second;
  using tag = dnnl::memory::format_tag;
  using dt = dnnl::memory::data_type;
  auto p = std::make_shared<Primitive>();
  p->x = dnnl::memory::desc({s.b, s.i, s.h, s.w}, dt::f32, tag::nhwc);
  p->y = dnnl::memory::desc({s.b, s.o, s.ho, s.wo}, dt::f32, tag::nhwc);
  p->hwio = dnnl::memory::desc({s.o, s.i, s.kh, s.kw}, dt::f32, tag::hwio);
  dnnl::memory::desc any_kernel({s.o, s.i, s.kh, s.kw}, dt::f32, tag::any);
  dnnl::memory::dims strides{1, 1}, low{s.pt, s.pl}, high{s.pb, s.pr};
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
#if DNNL_VERSION_MAJOR >= 3
  dnnl::convolution_forward::primitive_desc forward(Engine(), dnnl::prop_kind::forward_training,
                                                    dnnl::algorithm::convolution_direct, p->x, any_kernel, p->y,
                                                    strides, low, high, attr);
#else
  dnnl::convolution_forward::primitive_desc forward(
      dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
                                      p->x, any_kernel, p->y, strides, low, high),
      attr, Engine());
#endif
  if (kind == kForward) {
    Fill<dnnl::convolution_forward>(p.get(), forward, forward.weights_desc());
  } else if (kind == kInputGradient) {
#if DNNL_VERSION_MAJOR >= 3
    dnnl::convolution_backward_data::primitive_desc pd(Engine(), dnnl::algorithm::convolution_direct, p->x,
                                                       any_kernel, p->y, strides, low, high, forward, attr);
#else
    dnnl::convolution_backward_data::primitive_desc pd(
        dnnl::convolution_backward_data::desc(dnnl::algorithm::convolution_direct, p->x, any_kernel, p->y,
                                              strides, low, high),
        attr, Engine(), forward);
#endif
    Fill<dnnl::convolution_backward_data>(p.get(), pd, pd.weights_desc());
  } else {
#if DNNL_VERSION_MAJOR >= 3
    dnnl::convolution_backward_weights::primitive_desc pd(Engine(), dnnl::algorithm::convolution_direct, p->x,
                                                          any_kernel, p->y, strides, low, high, forward, attr);
#else
    dnnl::convolution_backward_weights::primitive_desc pd(
        dnnl::convolution_backward_weights::desc(dnnl::algorithm::convolution_direct, p->x, any_kernel, p->y,
                                                 strides, low, high),
        attr, Engine(), forward);
#endif
    Fill<dnnl::convolution_backward_weights>(p.get(), pd, pd.diff_weights_desc());
  }
  cache[{kind, s}] = p;
  return p;
}

// Runs work(0), ..., work(n - 1) on the calling thread and XLA's intra-op thread pool. Chunks are claimed
// from a counter, so the caller never waits for a task that has not started: a task that starts after every
// chunk is claimed returns at once, and the caller only waits for chunks already running elsewhere.
std::string ParallelFor(ffi::ThreadPool& pool, int n, const std::function<void(int)>& work) {
  struct State {
    std::atomic<int> next{0}, done{0};
    const std::function<void(int)>* work;
    std::mutex mutex;
    std::string error;
  };
  auto state = std::make_shared<State>();
  state->work = &work;
  auto drain = [](State& s, int n) {
    for (int c; (c = s.next.fetch_add(1)) < n;) {
      try {
        omp_set_num_threads(1);  // this thread's chunk runs on this thread alone: no OpenMP team
        (*s.work)(c);
      } catch (const std::exception& e) {
        std::lock_guard<std::mutex> lock(s.mutex);
        if (s.error.empty()) s.error = e.what();
      }
      s.done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int t = 1; t < n; ++t) pool.Schedule([state, n, drain] { drain(*state, n); });
  drain(*state, n);
  while (state->done.load(std::memory_order_acquire) < n) std::this_thread::yield();
  return state->error;
}

ffi::Error Run(Kind kind, ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
               ffi::Result<ffi::Buffer<ffi::F32>> out, int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  // kForward: a = x, b = k, out = y.  kInputGradient: a = dy, b = k, out = dx.  kKernelGradient: a = x, b = dy,
  // out = dk.
  auto ad = a.dimensions(), bd = b.dimensions(), od = out->dimensions();
  if (ad.size() != 4 || bd.size() != 4 || od.size() != 4) {
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "oneDNN convolution: operands must be 4-D");
  }
  Shape s;
  s.pt = pt; s.pb = pb; s.pl = pl; s.pr = pr;
  if (kind == kForward) {
    s.b = ad[0]; s.h = ad[1]; s.w = ad[2]; s.i = ad[3]; s.kh = bd[0]; s.kw = bd[1]; s.o = bd[3];
    s.ho = od[1]; s.wo = od[2];
  } else if (kind == kInputGradient) {
    s.b = ad[0]; s.ho = ad[1]; s.wo = ad[2]; s.o = ad[3]; s.kh = bd[0]; s.kw = bd[1]; s.i = bd[2];
    s.h = od[1]; s.w = od[2];
  } else {
    s.b = ad[0]; s.h = ad[1]; s.w = ad[2]; s.i = ad[3]; s.ho = bd[1]; s.wo = bd[2]; s.o = bd[3];
    s.kh = od[0]; s.kw = od[1];
  }
  // The batch is split into one chunk per thread of XLA's pool, each a single-threaded oneDNN call. (oneDNN's
  // own OpenMP threads, one team per XLA thread that calls it, competed with XLA's threads for the cores.)
  const int64_t total = s.b;
  const int n = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(pool.num_threads(), total)));
  auto chunk_start = [&](int c) { return total / n * c + std::min<int64_t>(c, total % n); };
  const int64_t x_image = s.h * s.w * s.i, y_image = s.ho * s.wo * s.o;
  try {
    omp_set_num_threads(1);
    auto& engine = Engine();
    float* a_data = const_cast<float*>(a.typed_data());
    float* b_data = const_cast<float*>(b.typed_data());
    float* out_data = out->typed_data();
    auto primitive = [&](int c) {
      Shape chunk = s;
      chunk.b = chunk_start(c + 1) - chunk_start(c);
      return Get(kind, chunk);
    };
    auto scratchpad = [&](const Primitive& p) {
      thread_local std::vector<char> scratch;
      if (scratch.size() < p.scratchpad_bytes) scratch.resize(p.scratchpad_bytes);
      return dnnl::memory(dnnl::memory::desc({static_cast<int64_t>(p.scratchpad_bytes)},
                                             dnnl::memory::data_type::u8, dnnl::memory::format_tag::a),
                          engine, scratch.data());
    };
    std::string error;
    if (kind != kKernelGradient) {
      // One reorder of the kernel into the layout the primitives want, shared by the chunks (every chunk's
      // primitive is asked for the same layout; checked below).
      auto first = primitive(0);
      dnnl::memory hwio(first->hwio, engine, b_data);
      dnnl::memory kernel = first->kernel == first->hwio ? hwio : dnnl::memory(first->kernel, engine);
      if (first->kernel != first->hwio) {
        dnnl::stream stream(engine);
        dnnl::reorder(hwio, kernel).execute(stream, hwio, kernel);
        stream.wait();
      }
      error = ParallelFor(pool, n, [&](int c) {
        auto p = primitive(c);
        if (p->kernel != first->kernel) throw std::runtime_error("chunks want different kernel layouts");
        dnnl::stream stream(engine);
        const int64_t start = chunk_start(c);
        if (kind == kForward) {
          dnnl::memory x(p->x, engine, a_data + start * x_image), y(p->y, engine, out_data + start * y_image);
          p->primitive.execute(stream, {{DNNL_ARG_SRC, x}, {DNNL_ARG_WEIGHTS, kernel}, {DNNL_ARG_DST, y},
                                        {DNNL_ARG_SCRATCHPAD, scratchpad(*p)}});
        } else {
          dnnl::memory dy(p->y, engine, a_data + start * y_image), dx(p->x, engine, out_data + start * x_image);
          p->primitive.execute(stream, {{DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_WEIGHTS, kernel},
                                        {DNNL_ARG_DIFF_SRC, dx}, {DNNL_ARG_SCRATCHPAD, scratchpad(*p)}});
        }
        stream.wait();
      });
    } else {
      // Each chunk's kernel gradient goes to its own HWIO buffer (chunk 0's to the output); they are summed
      // in chunk order, so the result does not depend on which thread ran which chunk.
      const int64_t k_size = od[0] * od[1] * od[2] * od[3];
      std::vector<std::vector<float>> partial(n - 1, std::vector<float>(k_size));
      error = ParallelFor(pool, n, [&](int c) {
        auto p = primitive(c);
        dnnl::stream stream(engine);
        const int64_t start = chunk_start(c);
        dnnl::memory x(p->x, engine, a_data + start * x_image), dy(p->y, engine, b_data + start * y_image);
        dnnl::memory hwio(p->hwio, engine, c == 0 ? out_data : partial[c - 1].data());
        dnnl::memory kernel = p->kernel == p->hwio ? hwio : dnnl::memory(p->kernel, engine);
        p->primitive.execute(stream, {{DNNL_ARG_SRC, x}, {DNNL_ARG_DIFF_DST, dy}, {DNNL_ARG_DIFF_WEIGHTS, kernel},
                                      {DNNL_ARG_SCRATCHPAD, scratchpad(*p)}});
        if (p->kernel != p->hwio) dnnl::reorder(kernel, hwio).execute(stream, kernel, hwio);
        stream.wait();
      });
      for (const auto& part : partial) {
        for (int64_t j = 0; j < k_size; ++j) out_data[j] += part[j];
      }
    }
    if (!error.empty()) return ffi::Error(ffi::ErrorCode::kInternal, "oneDNN convolution: " + error);
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("oneDNN convolution: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> k, ffi::Result<ffi::Buffer<ffi::F32>> y,
                   int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  return Run(kForward, pool, x, k, y, pt, pb, pl, pr);
}
ffi::Error InputGradient(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> k, ffi::Result<ffi::Buffer<ffi::F32>> dx,
                         int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  return Run(kInputGradient, pool, dy, k, dx, pt, pb, pl, pr);
}
ffi::Error KernelGradient(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::Result<ffi::Buffer<ffi::F32>> dk,
                          int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  return Run(kKernelGradient, pool, x, dy, dk, pt, pb, pl, pr);
}

}  // namespace

#define CFG_CONV_BINDING                                                                            \
  ffi::Ffi::Bind()                                                                                  \
      .Ctx<ffi::ThreadPool>()                                                                       \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                 \
      .Arg<ffi::Buffer<ffi::F32>>()                                                                 \
      .Ret<ffi::Buffer<ffi::F32>>()                                                                 \
      .Attr<int64_t>("pt")                                                                          \
      .Attr<int64_t>("pb")                                                                          \
      .Attr<int64_t>("pl")                                                                          \
      .Attr<int64_t>("pr")

XLA_FFI_DEFINE_HANDLER_SYMBOL(CfgOnednnConvForward, Forward, CFG_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(CfgOnednnConvInputGradient, InputGradient, CFG_CONV_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(CfgOnednnConvKernelGradient, KernelGradient, CFG_CONV_BINDING);

// The sha256 of the source this library was built from (-DCFG_SOURCE_SHA256), so a stale build is noticed.
extern "C" const char* CfgOnednnConvSourceSha256() { return CFG_SOURCE_SHA256; }

// The version of oneDNN this library runs on, e.g. "3.2.0" (oneDNN 2.x and 3.x both build: the primitive
// descriptors above are made with each one's API).
extern "C" const char* CfgOnednnConvOnednnVersion() {
  static const std::string version = [] {
    const dnnl_version_t* v = dnnl_version();
    return std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch);
  }();
  return version.c_str();
}

// oneDNN's name for the kernel it picked, e.g. "brgconv:avx512_core" (for benchmarks and bug reports).
extern "C" const char* CfgOnednnConvImplementation(int kind, int64_t b, int64_t h, int64_t w, int64_t i,
                                                   int64_t o, int64_t kh, int64_t kw, int64_t pt, int64_t pb,
                                                   int64_t pl, int64_t pr) {
  thread_local std::string name;
  Shape s{b, h, w, i, o, kh, kw, h + pt + pb - kh + 1, w + pl + pr - kw + 1, pt, pb, pl, pr};
  try {
    name = Get(static_cast<Kind>(kind), s)->implementation;
  } catch (const dnnl::error& e) {
    name = std::string("error: ") + e.what();
  }
  return name.c_str();
}
