#include "layers/change_set_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>

#include "ebs/engine/file_util.h"

namespace ebs::change_file {
namespace {

constexpr char kMagic[8] = {'E', 'B', 'S', 'C', 'H', 'A', 'N', 'G'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderFieldBytes = 48;  // checksummed; the checksum follows

uint64_t Fnv1a(const char* p, size_t n) {
  uint64_t h = 14695981039346656037ull;
  for (size_t i = 0; i < n; ++i) {
    h ^= static_cast<unsigned char>(p[i]);
    h *= 1099511628211ull;
  }
  return h;
}

Status Damaged(const std::string& path, const std::string& what) {
  return Status::Error(EBADMSG, "change tracking file " + path + " is damaged: " + what);
}

Status PreadAll(int fd, void* buf, size_t n, uint64_t off, const std::string& path) {
  char* p = static_cast<char*>(buf);
  while (n > 0) {
    ssize_t r = pread(fd, p, n, static_cast<off_t>(off));
    if (r < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "read " + path);
    }
    if (r == 0) return Damaged(path, "truncated");
    p += r;
    n -= static_cast<size_t>(r);
    off += static_cast<uint64_t>(r);
  }
  return Status::Ok();
}

}  // namespace

void EncodeHeader(const SetFile& s, char* page) {
  std::memset(page, 0, kHeaderBytes);
  std::memcpy(page, kMagic, 8);
  const uint32_t version = kVersion;
  const uint32_t header_bytes = kHeaderBytes;
  std::memcpy(page + 8, &version, 4);
  std::memcpy(page + 12, &header_bytes, 4);
  std::memcpy(page + 16, &s.chunk_size, 8);
  std::memcpy(page + 24, &s.chunk_count, 8);
  std::memcpy(page + 32, &s.generation, 8);
  std::memcpy(page + 40, &s.flags, 8);
  const uint64_t sum = Fnv1a(page, kHeaderFieldBytes);
  std::memcpy(page + kHeaderFieldBytes, &sum, 8);
}

std::string DirOf(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  return dir.empty() ? "." : dir;
}

Result<SetFile> ReadSetFile(int fd, const std::string& path) {
  char page[kHeaderBytes];
  EBS_RETURN_IF_ERROR(PreadAll(fd, page, kHeaderBytes, 0, path));
  if (std::memcmp(page, kMagic, 8) != 0) return Damaged(path, "bad magic");
  uint64_t sum;
  std::memcpy(&sum, page + kHeaderFieldBytes, 8);
  if (sum != Fnv1a(page, kHeaderFieldBytes)) return Damaged(path, "header checksum mismatch");
  uint32_t version, header_bytes;
  std::memcpy(&version, page + 8, 4);
  std::memcpy(&header_bytes, page + 12, 4);
  if (version != kVersion) return Damaged(path, "unknown version " + std::to_string(version));
  if (header_bytes != kHeaderBytes) return Damaged(path, "unexpected header size");
  SetFile s;
  std::memcpy(&s.chunk_size, page + 16, 8);
  std::memcpy(&s.chunk_count, page + 24, 8);
  std::memcpy(&s.generation, page + 32, 8);
  std::memcpy(&s.flags, page + 40, 8);
  if (s.chunk_size == 0 || !std::has_single_bit(s.chunk_size) || s.chunk_size > (uint64_t{1} << 30)) {
    return Damaged(path, "bad chunk size");
  }
  if (s.chunk_count > (uint64_t{1} << 40) || s.chunk_count > (uint64_t{1} << 62) / s.chunk_size) {
    return Damaged(path, "implausible chunk count");
  }
  struct stat st {};
  if (fstat(fd, &st) != 0) return Status::FromErrno(errno, "stat " + path);
  if (static_cast<uint64_t>(st.st_size) < FileBytes(s.chunk_count)) return Damaged(path, "truncated bitmap");
  s.words.resize(WordsFor(s.chunk_count));
  EBS_RETURN_IF_ERROR(PreadAll(fd, s.words.data(), s.words.size() * 8, kHeaderBytes, path));
  if (!s.words.empty()) s.words.back() &= ValidMask(s.words.size() - 1, s.chunk_count);
  return s;
}

Result<SetFile> ReadSetFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::FromErrno(errno, "open " + path);
  auto s = ReadSetFile(fd, path);
  ::close(fd);
  return s;
}

Status WriteSetFile(const std::string& path, const SetFile& s) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Status::FromErrno(errno, "create " + tmp);
  auto write_all = [&]() -> Status {
    char header[kHeaderBytes];
    EncodeHeader(s, header);
    EBS_RETURN_IF_ERROR(PwriteAll(fd, header, kHeaderBytes, 0, tmp));
    if (ftruncate(fd, static_cast<off_t>(FileBytes(s.chunk_count))) != 0) {
      return Status::FromErrno(errno, "truncate " + tmp);
    }
    std::vector<uint64_t> page(kWordsPerPage);
    for (uint64_t p = 0; p < PagesFor(s.words.size()); ++p) {
      const uint64_t begin = p * kWordsPerPage;
      const uint64_t end = std::min<uint64_t>(begin + kWordsPerPage, s.words.size());
      if (std::all_of(s.words.begin() + begin, s.words.begin() + end, [](uint64_t w) { return w == 0; })) continue;
      std::fill(page.begin(), page.end(), 0);
      std::copy(s.words.begin() + begin, s.words.begin() + end, page.begin());
      EBS_RETURN_IF_ERROR(PwriteAll(fd, page.data(), kPageBytes, kHeaderBytes + p * kPageBytes, tmp));
    }
    if (fdatasync(fd) != 0) return Status::FromErrno(errno, "fdatasync " + tmp);
    return Status::Ok();
  };
  Status st = write_all();
  ::close(fd);
  if (st.ok() && ::rename(tmp.c_str(), path.c_str()) != 0) st = Status::FromErrno(errno, "rename " + tmp);
  if (!st.ok()) {
    ::unlink(tmp.c_str());
    return st;
  }
  return SyncDirectory(DirOf(path));
}

FileRole RoleOf(const std::string& base, const std::string& name) {
  if (name == base) return FileRole::kMain;
  if (name.size() <= base.size() + 1 || name.compare(0, base.size() + 1, base + ".") != 0) return FileRole::kOther;
  std::string rest = name.substr(base.size() + 1);
  auto generation = [](const std::string& s) {
    return !s.empty() && s.size() <= 20 &&
           std::all_of(s.begin(), s.end(), [](unsigned char c) { return c >= '0' && c <= '9'; });
  };
  if (rest == "tmp") return FileRole::kTemporary;
  if (rest.size() > 4 && rest.compare(rest.size() - 4, 4, ".tmp") == 0) {
    return generation(rest.substr(0, rest.size() - 4)) ? FileRole::kTemporary : FileRole::kOther;
  }
  return generation(rest) ? FileRole::kCut : FileRole::kOther;
}

}  // namespace ebs::change_file
