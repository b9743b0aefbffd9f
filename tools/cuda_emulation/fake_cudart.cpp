// A host-memory stand-in for the parts of the CUDA runtime flexsp calls: "device" memory is
// host memory, kernels and copies run at once; FLEXSP_EMU_GPUS devices (default 1). A stream is
// busy only while NCCL work issued on it runs (fake_nccl.cpp's flexsp_emu_stream_busy). Linked
// instead of libcudart_static by run.sh.
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <chrono>
#include <thread>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <atomic>
#include <map>
#include <mutex>
static std::map<const char*, size_t> g_dev;  // allocations made by cudaMalloc: start -> bytes
static std::mutex g_m;
static int device_count() {
  const char* v = std::getenv("FLEXSP_EMU_GPUS");
  const int n = v ? std::atoi(v) : 1;
  return n > 0 ? n : 1;
}
// Whether fake NCCL work on `s` is still running (0 when the fake NCCL is not loaded).
static bool stream_busy(cudaStream_t s) {
  using busy_fn = int (*)(const void*);
  static std::atomic<busy_fn> fn{nullptr};
  if (!fn.load())
    if (void* h = ::dlopen("libnccl.so.2", RTLD_NOW | RTLD_NOLOAD))
      fn = reinterpret_cast<busy_fn>(::dlsym(h, "flexsp_emu_stream_busy"));
  auto f = fn.load();
  return f != nullptr && f(s) != 0;
}
static void wait_stream(cudaStream_t s) {
  while (stream_busy(s)) std::this_thread::sleep_for(std::chrono::microseconds{20});
}
extern "C" {
cudaError_t cudaDriverGetVersion(int* v) { *v = 13000; return cudaSuccess; }
cudaError_t cudaRuntimeGetVersion(int* v) { *v = 13000; return cudaSuccess; }
cudaError_t cudaGetDeviceCount(int* c) { *c = device_count(); return cudaSuccess; }
cudaError_t cudaSetDevice(int d) {
  return d >= 0 && d < device_count() ? cudaSuccess : cudaErrorInvalidDevice;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
  std::memset(p, 0, sizeof *p); std::strcpy(p->name, "Emulated GPU"); p->major = 9; p->minor = 0;
  p->totalGlobalMem = 1ull << 34; p->sharedMemPerBlockOptin = 227 * 1024; return cudaSuccess; }
const char* cudaGetErrorString(cudaError_t) { return "emulated error"; }
cudaError_t cudaGetLastError() { return cudaSuccess; }
cudaError_t cudaMalloc(void** p, size_t n) {
  *p = std::malloc(n ? n : 1);
  if (!*p) return cudaErrorMemoryAllocation;
  std::lock_guard l{g_m};
  g_dev[static_cast<const char*>(*p)] = n;
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total) {
  std::lock_guard l{g_m};
  size_t used = 0;
  for (const auto& [_, n] : g_dev) used += n;
  *total = 1ull << 34;  // as cudaGetDeviceProperties says
  *free_bytes = used < *total ? *total - used : 0;
  return cudaSuccess;
}
cudaError_t cudaFree(void* p) {
  {
    std::lock_guard l{g_m};
    g_dev.erase(static_cast<const char*>(p));
  }
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* d, const void* s, size_t n, cudaMemcpyKind) { std::memmove(d, s, n); return cudaSuccess; }
cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind, cudaStream_t st) { wait_stream(st); std::memmove(d, s, n); return cudaSuccess; }
cudaError_t cudaMemcpy2DAsync(void* d, size_t dp, const void* s, size_t sp, size_t w, size_t h, cudaMemcpyKind, cudaStream_t) {
  for (size_t r = 0; r < h; ++r) std::memcpy(static_cast<char*>(d) + r * dp, static_cast<const char*>(s) + r * sp, w); return cudaSuccess; }
cudaError_t cudaMemsetAsync(void* d, int v, size_t n, cudaStream_t) { std::memset(d, v, n); return cudaSuccess; }
cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* a, const void* p) {
  std::memset(a, 0, sizeof *a);
  const auto* c = static_cast<const char*>(p);
  std::lock_guard l{g_m};
  auto it = g_dev.upper_bound(c);  // the allocation starting at or before p, if p lies inside it
  const bool device = it != g_dev.begin() && c < std::prev(it)->first + std::prev(it)->second;
  a->type = device ? cudaMemoryTypeDevice : cudaMemoryTypeUnregistered;
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { *s = reinterpret_cast<cudaStream_t>(new int); return cudaSuccess; }
cudaError_t cudaStreamDestroy(cudaStream_t s) { delete reinterpret_cast<int*>(s); return cudaSuccess; }
cudaError_t cudaStreamSynchronize(cudaStream_t s) { wait_stream(s); return cudaSuccess; }
cudaError_t cudaStreamQuery(cudaStream_t s) { return stream_busy(s) ? cudaErrorNotReady : cudaSuccess; }
struct ev { std::chrono::steady_clock::time_point t; };
cudaError_t cudaEventCreate(cudaEvent_t* e) { *e = reinterpret_cast<cudaEvent_t>(new ev); return cudaSuccess; }
cudaError_t cudaEventDestroy(cudaEvent_t e) { delete reinterpret_cast<ev*>(e); return cudaSuccess; }
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t) { reinterpret_cast<ev*>(e)->t = std::chrono::steady_clock::now(); return cudaSuccess; }
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  *ms = std::chrono::duration<float, std::milli>(reinterpret_cast<ev*>(b)->t - reinterpret_cast<ev*>(a)->t).count(); return cudaSuccess; }
cudaError_t cudaFuncSetAttribute(const void*, cudaFuncAttribute, int) { return cudaSuccess; }
}
