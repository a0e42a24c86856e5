/* The two ways to make mimalloc 2.0.9 allocate only from one arena (docs/run.md):
 *   run_arena d   the default heap, the arena non-exclusive, mi_option_limit_os_alloc
 *                 (what libxmem-run.so does)
 *   run_arena t   a thread-local heap made lazily in an exclusive arena
 *                 (mi_heap_new_in_arena), what the program's threads would use
 * Arena: 512 MiB of plain anonymous memory. Prints the best of 5 rounds of 20M
 * small-object malloc/free pairs (16-256 B, 64 live), the same loop as run_malloc.
 * Run the two in alternation: `for i in 1 2; do run_arena d; run_arena t; done` */
#include <mimalloc.h>
#include <stdio.h>
#include <stdint.h>
#include <sys/mman.h>
#include <time.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static __thread mi_heap_t *th;
static mi_arena_id_t arena;
static void *a_heap(size_t n){ mi_heap_t *h=th; if(__builtin_expect(h==NULL,0)) h=th=mi_heap_new_in_arena(arena); return mi_heap_malloc(h,n);}
static double run(int tl, long n){ void *live[64]={0}; uint64_t s=1; double t0=now(); for(long i=0;i<n;i++){ s=s*6364136223846793005ull+1442695040888963407ull; unsigned k=s>>58; mi_free(live[k]); live[k]= tl? a_heap(16+((s>>20)%241)) : mi_malloc(16+((s>>20)%241)); *(volatile char*)live[k]=1;} double t=now()-t0; for(int k=0;k<64;k++) mi_free(live[k]); return t*1e9/n;}
int main(int argc,char**argv){ if(argc<2) return 2; int tl=argv[1][0]=='t'; size_t sz=512ull<<20; char*m=mmap(NULL,sz+(32<<20),PROT_READ|PROT_WRITE,MAP_PRIVATE|MAP_ANONYMOUS|MAP_NORESERVE,-1,0); char*lo=(char*)(((uintptr_t)m+(32<<20)-1)&~(uintptr_t)((32<<20)-1));
 if(!tl) mi_option_set(mi_option_limit_os_alloc,1); mi_option_set(mi_option_eager_commit_delay,0);
 if(!mi_manage_os_memory_ex(lo,sz,true,true,false,-1,tl,&arena)) return 1; double best=1e9; for(int r=0;r<5;r++){double v=run(tl,20000000); if(v<best)best=v;} printf("%s %.2f ns/pair\n", tl?"thread-local heap in exclusive arena":"default heap, limit_os_alloc", best); return 0;}
