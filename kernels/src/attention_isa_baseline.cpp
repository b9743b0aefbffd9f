// The attention tile loops built for one instruction set (flags set in kernels/CMakeLists.txt).
#define FLEXSP_ATTENTION_ISA baseline
#define FLEXSP_ATTENTION_ISA_NAME "baseline"
#define FLEXSP_ATTENTION_LANES 4
#include "attention_tiles.inl"
