/* nonewprivs: upstream's test/images/nonewprivs/nnp.go in C. Installed setuid root, it shows
 * whether the kernel honoured the bit (allowPrivilegeEscalation: false means no_new_privs). */
#include <stdio.h>
#include <unistd.h>

int main(void) {
  printf("Effective uid: %d\n", (int)geteuid());
  return 0;
}
