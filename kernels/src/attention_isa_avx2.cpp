// The attention tile loops built for one instruction set (flags set in kernels/CMakeLists.txt).
#define FLEXSP_ATTENTION_ISA avx2
#define FLEXSP_ATTENTION_ISA_NAME "avx2"
#define FLEXSP_ATTENTION_LANES 8
#include "attention_tiles.inl"
