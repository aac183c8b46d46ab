/*
 * fsutil.c - see fsutil.h. No state; every function is thread-safe.
 *
 * Invariants:
 *  1. Metadata files are replaced, never edited (write temp, fsync, rename,
 *     fsync the directory).
 *  2. EINTR is retried everywhere; fsync is called once and its failure is
 *     returned, never retried.
 */
#include "fsutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int ls_fsutil_pwrite_all(int fd, const void *buf, size_t len, off_t off)
{
	const char *p = buf;
	while (len > 0) {
		ssize_t w = pwrite(fd, p, len, off);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (w == 0)
			return -ENOSPC;
		p += w;
		off += w;
		len -= (size_t)w;
	}
	return 0;
}

ssize_t ls_fsutil_pread_all(int fd, void *buf, size_t len, off_t off)
{
	char *p = buf;
	size_t got = 0;
	while (got < len) {
		ssize_t r = pread(fd, p + got, len - got, off + (off_t)got);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			break;
		got += (size_t)r;
	}
	return (ssize_t)got;
}

int ls_fsutil_fsync_fd(int fd)
{
	if (fsync(fd) < 0)
		return -errno;
	return 0;
}

int ls_fsutil_write_atomic(int dirfd, const char *name, const void *data, size_t len)
{
	char tmp[512];
	int rc, fd;
	if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", name) >= sizeof(tmp))
		return -ENAMETOOLONG;
	fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	rc = ls_fsutil_pwrite_all(fd, data, len, 0);
	if (rc < 0)
		goto err_after_open;
	rc = ls_fsutil_fsync_fd(fd);
	if (rc < 0)
		goto err_after_open;
	if (close(fd) < 0) {
		rc = -errno;
		goto err_after_close;
	}
	if (renameat(dirfd, tmp, dirfd, name) < 0) {
		rc = -errno;
		goto err_after_close;
	}
	return ls_fsutil_fsync_fd(dirfd);

err_after_open:
	close(fd);
err_after_close:
	unlinkat(dirfd, tmp, 0);
	return rc;
}

int ls_fsutil_read_file(int dirfd, const char *name, void *buf, size_t cap, size_t *len)
{
	int rc = 0;
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	struct stat st;
	if (fstat(fd, &st) < 0) {
		rc = -errno;
		goto out;
	}
	if ((size_t)st.st_size > cap) {
		rc = -EFBIG;
		goto out;
	}
	ssize_t r = ls_fsutil_pread_all(fd, buf, (size_t)st.st_size, 0);
	if (r < 0) {
		rc = (int)r;
		goto out;
	}
	*len = (size_t)r;
out:
	close(fd);
	return rc;
}

int ls_fsutil_mkdir_p(const char *path)
{
	char buf[4096];
	size_t n = strlen(path);
	if (n == 0 || n >= sizeof(buf))
		return n ? -ENAMETOOLONG : -EINVAL;
	memcpy(buf, path, n + 1);
	for (size_t i = 1; i <= n; i++) {
		if (buf[i] != '/' && buf[i] != '\0')
			continue;
		char c = buf[i];
		buf[i] = '\0';
		if (mkdir(buf, 0755) < 0 && errno != EEXIST)
			return -errno;
		buf[i] = c;
	}
	struct stat st;
	if (stat(path, &st) < 0)
		return -errno;
	return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

static int rm_rf_at(int parent, const char *name)
{
	int rc = 0;
	if (unlinkat(parent, name, 0) == 0 || errno == ENOENT)
		return 0;
	if (errno != EISDIR && errno != EPERM)
		return -errno;
	int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	DIR *d = fdopendir(fd);
	if (!d) {
		rc = -errno;
		close(fd);
		return rc;
	}
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		int r = rm_rf_at(dirfd(d), de->d_name);
		if (r < 0 && rc == 0)
			rc = r;
	}
	closedir(d);
	if (rc == 0 && unlinkat(parent, name, AT_REMOVEDIR) < 0 && errno != ENOENT)
		rc = -errno;
	return rc;
}

int ls_fsutil_rm_rf(const char *path)
{
	return rm_rf_at(AT_FDCWD, path);
}
