// The envelope of dtrain's own files (checkpoints): a header of ours in front of the body, so a
// file is checked whole (length and checksum) before anything else, LibTorch included, reads it.
//
//   auto file = envelope::seal(body, "checkpoint");          // header + body, ready to write
//   auto body = envelope::open(file, "checkpoint", path);    // the body, or an IoError
//
// Header (native byte order, written with common/bytes.h):
//   8 bytes  magic "\x89DTR\r\n\x1a\n" (PNG-style: a text-mode transfer or a cut at a line end
//            breaks it, and no text file starts with 0x89)
//   u32      format version (1)
//   u64 + s  kind tag: length, then the characters (at most kMaxKindBytes)
//   u64      body length in bytes
//   u64      checksum: 64-bit FNV-1a (common/hash.h) of the kind tag, the body length and the body
// then the body, and nothing after it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace dtrain::envelope {

inline constexpr uint32_t kVersion = 1;
inline constexpr size_t kMaxKindBytes = 64;

// The body with the header in front. Throws InvalidArgument for an empty kind or one longer than
// kMaxKindBytes.
std::vector<std::byte> seal(std::span<const std::byte> body, std::string_view kind);

// The body of `file` (a view into it) once every part of the header checks out. Throws IoError
// whose message starts with `what` (the file's name) and says what is wrong: not a dtrain file
// (magic), a format version this build does not read, a file of another kind, truncated ("header
// says N bytes, file has M"), trailing bytes, or a checksum mismatch.
std::span<const std::byte> open(std::span<const std::byte> file, std::string_view kind,
                                const std::string& what);

// Whether `file` starts with the envelope magic (a file written before envelopes existed does
// not), so a reader can tell "old format" from "damaged".
bool is_sealed(std::span<const std::byte> file);

}  // namespace dtrain::envelope
