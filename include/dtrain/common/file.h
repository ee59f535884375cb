// Whole-file writes that readers never see half done: the bytes go to a uniquely named temporary
// file beside the target, which is then renamed over it. With `durable`, the file and its
// directory are fsynced first, so after a crash the target holds the old or the new bytes.
#pragma once

#include <span>
#include <string>

namespace dtrain {

// Throws IoError naming the file and the system error.
void write_file_atomic(const std::string& path, std::span<const char> bytes, bool durable);

}  // namespace dtrain
