// host emulation: 16-bit float types (emu_types.h)
#pragma once
#include "emu_types.h"
