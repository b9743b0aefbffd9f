// The attention tile loops built for one instruction set (flags set in kernels/CMakeLists.txt).
#define FLEXSP_ATTENTION_ISA avx512
#define FLEXSP_ATTENTION_ISA_NAME "avx512"
#define FLEXSP_ATTENTION_LANES 16
#include "attention_tiles.inl"
