// Force-included (-include) before every emulated translation unit.
#pragma once
#include <type_traits>
#include "ttt_decode_dual.h"
#include "emu_core.h"
#include "emu_ptx.h"
