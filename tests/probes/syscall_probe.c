/* Tries ONE syscall named on the command line and prints "NAME ret=R errno=E".
 *
 * Every call uses arguments that are harmless when NOT filtered (bad fds, missing paths,
 * invalid magic numbers), so running the probe unsandboxed as root cannot change the machine;
 * under the cmdop seccomp filter each must fail with EPERM (clone3: ENOSYS).
 * `i386` and `x32` issue getpid through a foreign ABI; the filter must kill the process (SIGSYS).
 *
 * The mknod* / mkfifo probes take a directory (argv[2]): they create DIR/node, check that it has
 * the requested file type, and delete it again, so a device node never outlives the probe.
 * A probe that returns a file descriptor closes it and reports ret=0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef AF_PACKET
#define AF_PACKET 17
#endif
#define HI (1L << 32) /* garbage in the upper half of an int argument */

#define SYSLOG_ACTION_READ_ALL 3
#define KCMP_FILE 0

/* A syscall that returns a descriptor: close it, report success as 0. */
static long fdok(long r) {
    if (r >= 0) { close((int)r); r = 0; }
    return r;
}

/* mknod (at=0) or mknodat (at=1) of DIR/node with `mode`; on success the node must have file
 * type `want` (else ret=-3) and is unlinked at once. errno is the mknod's own. */
static long node(const char *dir, int at, long mode, dev_t dev, mode_t want) {
    char path[4096];
    struct stat st;
    long r;
    int e, d;
    if (!dir) { errno = EINVAL; return -5; }
    snprintf(path, sizeof path, "%s/node", dir);
    unlink(path);
    if (at) {
        d = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (d < 0) return -4;
        r = syscall(SYS_mknodat, d, "node", mode, dev);
        e = errno;
        close(d);
    } else {
        r = syscall(SYS_mknod, path, mode, dev);
        e = errno;
    }
    if (r == 0) {
        if (lstat(path, &st) != 0 || (st.st_mode & S_IFMT) != want) r = -3;
        unlink(path);
    }
    errno = e;
    return r;
}

static long fifo(const char *dir) {
    char path[4096];
    long r;
    int e;
    if (!dir) { errno = EINVAL; return -5; }
    snprintf(path, sizeof path, "%s/fifo", dir);
    unlink(path);
    r = mkfifo(path, 0600); /* glibc: mknodat(AT_FDCWD, path, S_IFIFO | 0600, 0) */
    e = errno;
    if (r == 0) unlink(path);
    errno = e;
    return r;
}

static long foreign(int x32) {
#if defined(__x86_64__)
    long ret;
    if (x32) {
        __asm__ volatile("syscall" : "=a"(ret) : "a"(0x40000000L | 39) : "rcx", "r11", "memory");
    } else {
        __asm__ volatile("int $0x80" : "=a"(ret) : "a"(20L) : "memory");
    }
    return ret;
#else
    (void)x32;
    return -ENOSYS;
#endif
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *w = argv[1];
    const char *dir = argc > 2 ? argv[2] : NULL;
    static char buf[1 << 16];
    long r = -2;
    errno = 0;
    if (!strcmp(w, "socket_raw")) r = syscall(SYS_socket, AF_INET, SOCK_RAW, 1);
    else if (!strcmp(w, "socket_raw_flags")) r = syscall(SYS_socket, AF_INET, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, 1);
    else if (!strcmp(w, "socket_raw_hibits")) r = syscall(SYS_socket, HI | AF_INET, HI | SOCK_RAW, 1);
    else if (!strcmp(w, "socket_packet")) r = syscall(SYS_socket, AF_PACKET, SOCK_DGRAM, 0);
    else if (!strcmp(w, "socket_packet_hibits")) r = syscall(SYS_socket, HI | AF_PACKET, SOCK_DGRAM, 0);
    else if (!strcmp(w, "socket_sock_packet")) r = syscall(SYS_socket, AF_INET, SOCK_PACKET, 0);
    else if (!strcmp(w, "socket_raw6")) r = fdok(syscall(SYS_socket, AF_INET6, SOCK_RAW, 58));
    else if (!strcmp(w, "socket_raw6_flags")) r = fdok(syscall(SYS_socket, AF_INET6, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, 58));
    else if (!strcmp(w, "socket_raw6_hibits")) r = fdok(syscall(SYS_socket, HI | AF_INET6, HI | SOCK_RAW, 58));
    else if (!strcmp(w, "socket_sock_packet6")) r = fdok(syscall(SYS_socket, AF_INET6, SOCK_PACKET, 0));
    else if (!strcmp(w, "socket_packet_raw")) r = fdok(syscall(SYS_socket, AF_PACKET, SOCK_RAW, 0));
    else if (!strcmp(w, "socket_packet_raw_flags")) r = fdok(syscall(SYS_socket, AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0));
    else if (!strcmp(w, "socket_packet_stream")) r = fdok(syscall(SYS_socket, AF_PACKET, SOCK_STREAM, 0));
    else if (!strcmp(w, "socket_inet6")) r = fdok(syscall(SYS_socket, AF_INET6, SOCK_STREAM, 0));
    else if (!strcmp(w, "socket_inet_dgram")) r = fdok(syscall(SYS_socket, AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    else if (!strcmp(w, "socket_unix")) r = fdok(syscall(SYS_socket, AF_UNIX, SOCK_DGRAM, 0));
    else if (!strcmp(w, "socket_netlink")) r = fdok(syscall(SYS_socket, AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE));
    else if (!strcmp(w, "socket_netlink_plain")) r = fdok(syscall(SYS_socket, AF_NETLINK, SOCK_RAW, NETLINK_ROUTE));
    else if (!strcmp(w, "socket_netlink_diag")) r = fdok(syscall(SYS_socket, AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG));
    else if (!strcmp(w, "socket_netlink_dgram")) r = fdok(syscall(SYS_socket, AF_NETLINK, SOCK_DGRAM, NETLINK_ROUTE));
    else if (!strcmp(w, "chroot")) r = syscall(SYS_chroot, "/");
    else if (!strcmp(w, "fanotify_init")) r = fdok(syscall(SYS_fanotify_init, 0 /* FAN_CLASS_NOTIF */, O_RDONLY));
    else if (!strcmp(w, "syslog")) r = syscall(SYS_syslog, SYSLOG_ACTION_READ_ALL, buf, (long)sizeof buf);
    else if (!strcmp(w, "kcmp")) r = syscall(SYS_kcmp, getpid(), getpid(), KCMP_FILE, 1, 1);
    else if (!strcmp(w, "mknod_blk")) r = node(dir, 0, S_IFBLK | 0600, makedev(0, 0), S_IFBLK);
    else if (!strcmp(w, "mknod_chr")) r = node(dir, 0, S_IFCHR | 0600, makedev(1, 3), S_IFCHR);
    else if (!strcmp(w, "mknod_blk_hibits")) r = node(dir, 0, HI | S_IFBLK | 0600, makedev(0, 0), S_IFBLK);
    else if (!strcmp(w, "mknod_chr_hibits")) r = node(dir, 0, HI | S_IFCHR | 0600, makedev(1, 3), S_IFCHR);
    else if (!strcmp(w, "mknodat_blk")) r = node(dir, 1, S_IFBLK | 0600, makedev(0, 0), S_IFBLK);
    else if (!strcmp(w, "mknodat_chr")) r = node(dir, 1, S_IFCHR | 0600, makedev(1, 3), S_IFCHR);
    else if (!strcmp(w, "mknodat_blk_hibits")) r = node(dir, 1, HI | S_IFBLK | 0600, makedev(0, 0), S_IFBLK);
    else if (!strcmp(w, "mknodat_chr_hibits")) r = node(dir, 1, HI | S_IFCHR | 0600, makedev(1, 3), S_IFCHR);
    else if (!strcmp(w, "mknod_fifo")) r = node(dir, 0, S_IFIFO | 0600, 0, S_IFIFO);
    else if (!strcmp(w, "mknod_reg")) r = node(dir, 0, S_IFREG | 0600, 0, S_IFREG);
    else if (!strcmp(w, "mknod_reg_notype")) r = node(dir, 0, 0600, 0, S_IFREG);   /* type 0 = regular */
    else if (!strcmp(w, "mknod_sock")) r = node(dir, 0, S_IFSOCK | 0600, 0, S_IFSOCK);
    else if (!strcmp(w, "mknodat_fifo")) r = node(dir, 1, S_IFIFO | 0600, 0, S_IFIFO);
    else if (!strcmp(w, "mknodat_reg")) r = node(dir, 1, S_IFREG | 0600, 0, S_IFREG);
    else if (!strcmp(w, "mkfifo")) r = fifo(dir);
    else if (!strcmp(w, "ptrace")) r = syscall(SYS_ptrace, 0x7fff, 0, 0, 0);
    else if (!strcmp(w, "process_vm_readv")) r = syscall(SYS_process_vm_readv, getpid(), 0, 0, 0, 0, 0);
    else if (!strcmp(w, "process_vm_writev")) r = syscall(SYS_process_vm_writev, getpid(), 0, 0, 0, 0, 0);
    else if (!strcmp(w, "mount")) r = syscall(SYS_mount, "none", "/nonexistent-cmdop", "tmpfs", 0, 0);
    else if (!strcmp(w, "umount2")) r = syscall(SYS_umount2, "/nonexistent-cmdop", 0);
    else if (!strcmp(w, "pivot_root")) r = syscall(SYS_pivot_root, "/nonexistent-cmdop", "/nonexistent-cmdop");
    else if (!strcmp(w, "fsopen")) r = syscall(SYS_fsopen, "nonexistentfs", 0);
    else if (!strcmp(w, "fsconfig")) r = syscall(SYS_fsconfig, -1, 0, 0, 0, 0);
    else if (!strcmp(w, "fsmount")) r = syscall(SYS_fsmount, -1, 0, 0);
    else if (!strcmp(w, "fspick")) r = syscall(SYS_fspick, -1, "", 0);
    else if (!strcmp(w, "move_mount")) r = syscall(SYS_move_mount, -1, "", -1, "", 0);
    else if (!strcmp(w, "open_tree")) r = syscall(SYS_open_tree, -1, "/nonexistent-cmdop", 0);
    else if (!strcmp(w, "mount_setattr")) r = syscall(SYS_mount_setattr, -1, "", 0, 0, 0);
    else if (!strcmp(w, "unshare")) r = syscall(SYS_unshare, 0);
    else if (!strcmp(w, "setns")) r = syscall(SYS_setns, -1, 0);
    else if (!strcmp(w, "clone_newuser") || !strcmp(w, "clone_newnet") || !strcmp(w, "clone_newns")) {
        long flag = !strcmp(w, "clone_newuser") ? CLONE_NEWUSER : !strcmp(w, "clone_newnet") ? CLONE_NEWNET : CLONE_NEWNS;
        r = syscall(SYS_clone, flag | SIGCHLD, 0, 0, 0, 0);
        if (r == 0) _exit(0);
        if (r > 0) waitpid((pid_t)r, 0, 0);
    } else if (!strcmp(w, "clone_plain")) {
        r = syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
        if (r == 0) _exit(0);
        if (r > 0) { waitpid((pid_t)r, 0, 0); r = 0; }
    } else if (!strcmp(w, "clone3")) {
        struct clone_args a;
        memset(&a, 0, sizeof a);
        a.flags = CLONE_NEWUSER;
        a.exit_signal = SIGCHLD;
        r = syscall(SYS_clone3, &a, sizeof a);
        if (r == 0) _exit(0);
        if (r > 0) waitpid((pid_t)r, 0, 0);
    }
    else if (!strcmp(w, "io_uring_setup")) r = syscall(SYS_io_uring_setup, 0, 0);
    else if (!strcmp(w, "io_uring_enter")) r = syscall(SYS_io_uring_enter, -1, 0, 0, 0, 0, 0);
    else if (!strcmp(w, "io_uring_register")) r = syscall(SYS_io_uring_register, -1, 0, 0, 0);
    else if (!strcmp(w, "kexec_load")) r = syscall(SYS_kexec_load, 0, 0, 0, 0xdead0000UL);
    else if (!strcmp(w, "kexec_file_load")) r = syscall(SYS_kexec_file_load, -1, -1, 0, 0, 0xdead0000UL);
    else if (!strcmp(w, "init_module")) r = syscall(SYS_init_module, 0, 0, "");
    else if (!strcmp(w, "finit_module")) r = syscall(SYS_finit_module, -1, "", 0);
    else if (!strcmp(w, "delete_module")) r = syscall(SYS_delete_module, "cmdop_no_such_module", 04000);
    else if (!strcmp(w, "bpf")) r = syscall(SYS_bpf, -1, 0, 0);
    else if (!strcmp(w, "perf_event_open")) r = syscall(SYS_perf_event_open, 0, 0, -1, -1, 0);
    else if (!strcmp(w, "keyctl")) r = syscall(SYS_keyctl, -1, 0, 0, 0, 0);
    else if (!strcmp(w, "add_key")) r = syscall(SYS_add_key, 0, 0, 0, 0, 0);
    else if (!strcmp(w, "request_key")) r = syscall(SYS_request_key, 0, 0, 0, 0);
    else if (!strcmp(w, "reboot")) r = syscall(SYS_reboot, 0, 0, 0, 0);
    else if (!strcmp(w, "swapon")) r = syscall(SYS_swapon, "/nonexistent-cmdop", 0);
    else if (!strcmp(w, "swapoff")) r = syscall(SYS_swapoff, "/nonexistent-cmdop");
    else if (!strcmp(w, "acct")) r = syscall(SYS_acct, "/nonexistent-cmdop");
    else if (!strcmp(w, "userfaultfd")) { r = syscall(SYS_userfaultfd, 0); if (r >= 0) close((int)r); }
    else if (!strcmp(w, "open_by_handle_at")) r = syscall(SYS_open_by_handle_at, -1, 0, 0);
    else if (!strcmp(w, "socket_inet")) { r = syscall(SYS_socket, AF_INET, SOCK_STREAM, 0); if (r >= 0) { close((int)r); r = 0; } }
    else if (!strcmp(w, "i386")) r = foreign(0);
    else if (!strcmp(w, "x32")) r = foreign(1);
    else { fprintf(stderr, "unknown probe %s\n", w); return 2; }
    printf("%s ret=%ld errno=%d\n", w, r, r == -1 ? errno : 0);
    return 0;
}
