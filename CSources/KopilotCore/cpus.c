/* cpus.c - how many CPUs this process may use, for the default loop count.
 *
 * Two limits apply on Linux and either may be the smaller: the affinity mask
 * (which CPUs the scheduler may run us on) and the cgroup CPU quota (how
 * much CPU time per period the group gets; what Kubernetes' limits.cpu
 * sets). A loop per CPU of quota keeps a throttled pod from running more
 * busy threads than it is paid for; a loop per CPU of affinity keeps a
 * pinned process from oversubscribing its cores. */
#include "internal.h"

#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* Reads a small file whole; 0 on success. */
static int read_small(const char *path, char *buf, size_t cap) {
  FILE *f = fopen(path, "r");
  size_t n;
  if (f == NULL) return -1;
  n = fread(buf, 1, cap - 1, f);
  fclose(f);
  buf[n] = 0;
  return 0;
}

static int ceil_div(long long q, long long p) {
  long long n = (q + p - 1) / p;
  return n < 1 ? 1 : n > 65536 ? 65536 : (int)n;
}

int kp_cgroup_cpu_quota(const char *dir) {
  char path[4096], buf[128];
  long long quota, period;
  /* cgroup v2: "max 100000" or "<quota> <period>" in microseconds. */
  snprintf(path, sizeof(path), "%s/cpu.max", dir);
  if (read_small(path, buf, sizeof(buf)) == 0) {
    if (strncmp(buf, "max", 3) == 0) return 0;
    if (sscanf(buf, "%lld %lld", &quota, &period) != 2 || quota <= 0 ||
        period <= 0)
      return 0;
    return ceil_div(quota, period);
  }
  /* cgroup v1: -1 means no quota. */
  snprintf(path, sizeof(path), "%s/cpu.cfs_quota_us", dir);
  if (read_small(path, buf, sizeof(buf)) != 0 ||
      sscanf(buf, "%lld", &quota) != 1 || quota <= 0)
    return 0;
  snprintf(path, sizeof(path), "%s/cpu.cfs_period_us", dir);
  if (read_small(path, buf, sizeof(buf)) != 0 ||
      sscanf(buf, "%lld", &period) != 1 || period <= 0)
    return 0;
  return ceil_div(quota, period);
}

/* The smallest quota on the way from mount/path up to mount. */
static int quota_up_from(const char *mount, const char *path) {
  char dir[4096];
  int best = 0;
  size_t n;
  if (snprintf(dir, sizeof(dir), "%s%s", mount, path) >= (int)sizeof(dir))
    return 0;
  n = strlen(dir);
  while (n > 0 && dir[n - 1] == '/') dir[--n] = 0;
  for (;;) {
    int q = kp_cgroup_cpu_quota(dir);
    char *slash;
    if (q > 0 && (best == 0 || q < best)) best = q;
    if (strlen(dir) <= strlen(mount)) break;
    slash = strrchr(dir, '/');
    if (slash == NULL) break;
    *slash = 0;
  }
  return best;
}

/* The quota of the cgroup /proc/self/cgroup names, v2 ("0::/path") or the
 * v1 cpu controller ("N:cpu,cpuacct:/path"). Inside a container with its
 * own cgroup namespace the path is "/" and the mount is the container's
 * group; without one the path is the host's, which the mount may not have,
 * so the mount's own files are read as well. */
static int cgroup_quota(void) {
  char line[4096];
  int best = 0;
  FILE *f = fopen("/proc/self/cgroup", "r");
  if (f == NULL) return 0;
  while (fgets(line, sizeof(line), f) != NULL) {
    char *a = strchr(line, ':'), *b = a ? strchr(a + 1, ':') : NULL;
    const char *mount = NULL;
    int q;
    if (b == NULL) continue;
    line[strcspn(line, "\n")] = 0;
    *b = 0;
    if (strcmp(a + 1, "") == 0) {
      mount = "/sys/fs/cgroup";
    } else {
      /* A v1 hierarchy: only the one with the cpu controller counts. */
      char *ctl = a + 1, *tok, *save = NULL;
      for (tok = strtok_r(ctl, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
        if (strcmp(tok, "cpu") == 0) break;
      if (tok == NULL) continue;
      mount = access("/sys/fs/cgroup/cpu,cpuacct", F_OK) == 0
                  ? "/sys/fs/cgroup/cpu,cpuacct"
                  : "/sys/fs/cgroup/cpu";
    }
    q = quota_up_from(mount, b + 1);
    if (q > 0 && (best == 0 || q < best)) best = q;
  }
  fclose(f);
  return best;
}

int kp_cpus_available(void) {
  cpu_set_t set;
  int n = 0, q;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) n = CPU_COUNT(&set);
  if (n < 1) n = 1;
  q = cgroup_quota();
  if (q > 0 && q < n) n = q;
  return n;
}
