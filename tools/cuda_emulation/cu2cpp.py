#!/usr/bin/env python3
"""Turns a .cu file into C++ for the CPU emulation (emu_kernel.hpp): kernel launches
`k<<<grid, block, smem, stream>>>(args)` become `emu::launch(k, grid, block, smem, stream, args)`
and `extern __shared__ float s[];` points at the block's dynamic shared memory.

Usage: cu2cpp.py IN.cu OUT.cpp
"""
import re
import sys


def split_top_level(text):
    """Splits a launch configuration at the commas outside brackets."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    parts.append(current.strip())
    return parts


def launch(match):
    kernel, config = match.group(1), split_top_level(match.group(2))
    defaults = ["", "", "0", "nullptr"]  # grid and block are required; smem 0, default stream
    config += defaults[len(config):]
    return "emu::launch({}, {}, ".format(kernel, ", ".join(config))


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    source = open(sys.argv[1]).read()
    source = re.sub(r"extern __shared__ float (\w+)\[\];",
                    r"float* \1 = reinterpret_cast<float*>(emu::dyn_smem);", source)
    source = re.sub(r"([\w:<>]+)\s*<<<(.*?)>>>\(", launch, source, flags=re.S)
    with open(sys.argv[2], "w") as out:
        out.write('#include "emu_kernel.hpp"\n' + source)


if __name__ == "__main__":
    main()
