// libcublas.so.13 stand-in over OpenBLAS (column-major GemmEx for f32 and bf16).
#include <cublas_api.h>
#include <cblas.h>
#include <cstring>
#include <vector>
static float bf(uint16_t h) { uint32_t u = uint32_t(h) << 16; float f; std::memcpy(&f, &u, 4); return f; }
static uint16_t tobf(float f) { uint32_t u; std::memcpy(&u, &f, 4); return uint16_t((u + 0x7fff + ((u >> 16) & 1)) >> 16); }
extern "C" {
cublasStatus_t cublasCreate_v2(cublasHandle_t* h) { *h = reinterpret_cast<cublasHandle_t>(new int); return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasDestroy_v2(cublasHandle_t h) { delete reinterpret_cast<int*>(h); return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetStream_v2(cublasHandle_t, cudaStream_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasSetMathMode(cublasHandle_t, cublasMath_t) { return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasGetVersion_v2(cublasHandle_t, int* v) { *v = 130000; return CUBLAS_STATUS_SUCCESS; }
cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k, const void* alpha,
                            const void* A, cudaDataType at, int lda, const void* B, cudaDataType, int ldb, const void* beta,
                            void* C, cudaDataType, int ldc, cublasComputeType_t, cublasGemmAlgo_t) {
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  auto TA = ta == CUBLAS_OP_T ? CblasTrans : CblasNoTrans, TB = tb == CUBLAS_OP_T ? CblasTrans : CblasNoTrans;
  if (at == CUDA_R_32F) {
    cblas_sgemm(CblasColMajor, TA, TB, m, n, k, al, (const float*)A, lda, (const float*)B, ldb, be, (float*)C, ldc);
    return CUBLAS_STATUS_SUCCESS;
  }
  const int arows = ta == CUBLAS_OP_T ? k : m, acols = ta == CUBLAS_OP_T ? m : k;
  const int brows = tb == CUBLAS_OP_T ? n : k, bcols = tb == CUBLAS_OP_T ? k : n;
  std::vector<float> a(size_t(lda) * acols), b(size_t(ldb) * bcols), c(size_t(ldc) * n);
  for (size_t i = 0; i < a.size(); ++i) a[i] = bf(((const uint16_t*)A)[i]);
  for (size_t i = 0; i < b.size(); ++i) b[i] = bf(((const uint16_t*)B)[i]);
  for (size_t i = 0; i < c.size(); ++i) c[i] = bf(((const uint16_t*)C)[i]);
  (void)arows; (void)brows;
  cblas_sgemm(CblasColMajor, TA, TB, m, n, k, al, a.data(), lda, b.data(), ldb, be, c.data(), ldc);
  for (size_t i = 0; i < c.size(); ++i) ((uint16_t*)C)[i] = tobf(c[i]);
  return CUBLAS_STATUS_SUCCESS;
}
}
