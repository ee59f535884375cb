// A rendezvous store in Redis (for hosts without a shared file system). Plain SET/GET/EXISTS/DEL
// over hiredis; values are binary-safe. Unlike Gloo's RedisStore, `set` overwrites, so a key left
// by an earlier job with the same run id cannot abort a new one.
#include <hiredis/hiredis.h>

#include <mutex>

#include "dtrain/comm/rendezvous.h"
#include "dtrain/common/error.h"

namespace dtrain::comm {
namespace {

class RedisStore : public Store {
 public:
  RedisStore(std::string host, int port) : host_(std::move(host)), port_(port) {
    struct timeval tv {
      5, 0
    };
    ctx_ = redisConnectWithTimeout(host_.c_str(), port_, tv);
    if (ctx_ == nullptr || ctx_->err) {
      std::string why = ctx_ ? ctx_->errstr : "out of memory";
      if (ctx_) redisFree(ctx_);
      ctx_ = nullptr;
      throw IoError(
          detail::concat("rendezvous: cannot connect to Redis at ", host_, ":", port_, ": ", why));
    }
  }
  ~RedisStore() override {
    if (ctx_) redisFree(ctx_);
  }

  void set(const std::string& key, const std::vector<char>& data) override {
    Reply r = command("SET %b %b", key.data(), key.size(), data.data(), data.size());
  }

  std::vector<char> get(const std::string& key) override {
    wait({key});
    Reply r = command("GET %b", key.data(), key.size());
    if (r->type != REDIS_REPLY_STRING) {
      throw IoError(detail::concat("rendezvous: Redis ", host_, ":", port_, " has no key ", key));
    }
    return std::vector<char>(r->str, r->str + r->len);
  }

  std::optional<std::vector<char>> try_get(const std::string& key) override {
    Reply r = command("GET %b", key.data(), key.size());
    if (r->type != REDIS_REPLY_STRING) return std::nullopt;
    return std::vector<char>(r->str, r->str + r->len);
  }

  bool check(const std::vector<std::string>& keys) override {
    for (const auto& k : keys) {
      Reply r = command("EXISTS %b", k.data(), k.size());
      if (r->type != REDIS_REPLY_INTEGER || r->integer != 1) return false;
    }
    return true;
  }

  void remove(const std::vector<std::string>& keys) override {
    for (const auto& k : keys) command("DEL %b", k.data(), k.size());
  }

 private:
  struct Free {
    void operator()(redisReply* r) const { freeReplyObject(r); }
  };
  using Reply = std::unique_ptr<redisReply, Free>;

  template <typename... Args>
  Reply command(const char* fmt, Args... args) {
    std::lock_guard<std::mutex> lock(mu_);
    auto* r = static_cast<redisReply*>(redisCommand(ctx_, fmt, args...));
    if (r == nullptr) {
      throw IoError(detail::concat("rendezvous: Redis ", host_, ":", port_, ": ", ctx_->errstr));
    }
    if (r->type == REDIS_REPLY_ERROR) {
      std::string msg(r->str, r->len);
      freeReplyObject(r);
      throw IoError(detail::concat("rendezvous: Redis ", host_, ":", port_, " replied: ", msg));
    }
    return Reply(r);
  }

  std::string host_;
  int port_;
  redisContext* ctx_ = nullptr;
  std::mutex mu_;
};

}  // namespace

std::unique_ptr<Store> make_redis_store(const std::string& host, int port) {
  return std::make_unique<RedisStore>(host, port);
}

}  // namespace dtrain::comm
