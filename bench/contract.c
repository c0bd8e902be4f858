/*
 * The limit of limpeza's safety contract: the system calls limpeza makes for each
 * directory and each entry, and nothing else (no interpreter, no counters, no audit).
 * Bench only; bench/contract.py compiles and runs it beside limpeza and find.
 *
 *   contract ROOT RECURSIVE MAX_AGE_SECONDS PROTECT PATTERN...
 *
 * Per directory: openat(O_NOFOLLOW|O_DIRECTORY), fstat, statx(STATX_MNT_ID) (a mount
 * point is never entered), the names read with getdents (on a dup of the descriptor, as
 * os.scandir does), then per entry fstatat(AT_SYMLINK_NOFOLLOW). Per expired regular file
 * whose base name matches a pattern (fnmatch(3)) and not PROTECT: openat(O_NOFOLLOW|
 * O_NONBLOCK), fstat (same inode as examined), statx(STATX_MNT_ID) (same mount), a
 * non-blocking flock (a file someone holds is left alone), fstatat of the name again
 * (still the same file), unlinkat, close. Prints the number of files removed.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_DEPTH 64

static const char *protect;
static char **patterns;
static int n_patterns;
static int recursive;
static double cutoff;
static long removed;

static int mount_id(int fd, unsigned long long *id)
{
	struct statx stx;
	if (statx(fd, "", AT_EMPTY_PATH | AT_SYMLINK_NOFOLLOW | AT_NO_AUTOMOUNT, STATX_MNT_ID,
		  &stx) != 0 || !(stx.stx_mask & STATX_MNT_ID))
		return -1;
	*id = stx.stx_mnt_id;
	return 0;
}

static int matches(const char *name)
{
	if (fnmatch(protect, name, 0) == 0)
		return 0;
	for (int i = 0; i < n_patterns; i++)
		if (fnmatch(patterns[i], name, 0) == 0)
			return 1;
	return 0;
}

static double mtime(const struct stat *st)
{
	return (double)st->st_mtim.tv_sec + st->st_mtim.tv_nsec / 1e9;
}

static void remove_file(int dir_fd, const char *name, const struct stat *seen,
			unsigned long long mount)
{
	struct stat st, again;
	unsigned long long file_mount;
	int fd = openat(dir_fd, name, O_RDONLY | O_NOCTTY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return;
	if (fstat(fd, &st) == 0 && st.st_dev == seen->st_dev && st.st_ino == seen->st_ino &&
	    mount_id(fd, &file_mount) == 0 && file_mount == mount &&
	    flock(fd, LOCK_EX | LOCK_NB) == 0 &&
	    fstatat(dir_fd, name, &again, AT_SYMLINK_NOFOLLOW) == 0 &&
	    again.st_dev == st.st_dev && again.st_ino == st.st_ino &&
	    unlinkat(dir_fd, name, 0) == 0)
		removed++;
	close(fd);
}

static void sweep(int parent_fd, const char *path, int depth, unsigned long long root_mount)
{
	struct stat st;
	unsigned long long mount;
	int fd = openat(parent_fd, path, O_RDONLY | O_NOFOLLOW | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return;
	if (fstat(fd, &st) != 0 || mount_id(fd, &mount) != 0 ||
	    (depth > 0 && mount != root_mount)) {
		close(fd);
		return;
	}
	if (depth == 0)
		root_mount = mount;
	DIR *dir = fdopendir(dup(fd));
	if (dir == NULL) {
		close(fd);
		return;
	}
	size_t count = 0, size = 256;
	char **names = malloc(size * sizeof *names);
	struct dirent *entry;
	while ((entry = readdir(dir)) != NULL) {
		if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0)
			continue;
		if (count == size)
			names = realloc(names, (size *= 2) * sizeof *names);
		names[count++] = strdup(entry->d_name);
	}
	closedir(dir);
	for (size_t i = 0; i < count; i++) {
		struct stat entry_st;
		if (fstatat(fd, names[i], &entry_st, AT_SYMLINK_NOFOLLOW) == 0) {
			if (S_ISDIR(entry_st.st_mode)) {
				if (recursive && depth < MAX_DEPTH)
					sweep(fd, names[i], depth + 1, root_mount);
			} else if (S_ISREG(entry_st.st_mode) && matches(names[i]) &&
				   mtime(&entry_st) < cutoff) {
				remove_file(fd, names[i], &entry_st, root_mount);
			}
		}
		free(names[i]);
	}
	free(names);
	close(fd);
}

int main(int argc, char **argv)
{
	if (argc < 6) {
		fprintf(stderr, "usage: %s ROOT RECURSIVE MAX_AGE_SECONDS PROTECT PATTERN...\n",
			argv[0]);
		return 2;
	}
	recursive = atoi(argv[2]);
	cutoff = (double)time(NULL) - atof(argv[3]);
	protect = argv[4];
	patterns = argv + 5;
	n_patterns = argc - 5;
	sweep(AT_FDCWD, argv[1], 0, 0);
	printf("%ld\n", removed);
	return 0;
}
